"""Errors of the exporters package (it imports nothing of qcal; qcal wraps these where it calls them)."""


class ExporterError(Exception):
    """An artifact could not be written, or the input does not satisfy the target profile."""
