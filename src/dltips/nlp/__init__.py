"""Helpers for training language models: weight tying, compute budgets and scaling laws, FLOPs per token, MFU."""
