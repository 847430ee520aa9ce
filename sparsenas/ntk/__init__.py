"""Empirical NTK, NTK metrics and Label-Gradient Alignment."""
