"""Evaluation metrics for trained models (one module per metric)."""
