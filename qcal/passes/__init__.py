"""Quantization passes: one algorithm per file."""
