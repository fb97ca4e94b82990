"""Evaluation metrics and the report (issue 8)."""
