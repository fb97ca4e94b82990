"""Datasets: greatest_hits, vig, folder, synthetic_hits (issue 5)."""
