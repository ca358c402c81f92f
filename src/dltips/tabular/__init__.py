"""Tabular: embedding sizes, a robust categorical encoder, a tabular model and its data."""
