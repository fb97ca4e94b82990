"""Exemplar retrieval and recall@K (issue 8)."""
