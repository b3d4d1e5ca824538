"""Calibration: activation statistics, the pipeline that builds a QuantTable, range diagnostics."""
