"""The typed errors qcal raises. Every message names the object, the problem and the fix."""

from __future__ import annotations


class QcalError(Exception):
    """Base of every error qcal raises on purpose."""


class ConfigError(QcalError, ValueError):
    """A configuration value or key is wrong (unknown key, bad choice, out of range)."""


class CheckpointError(QcalError):
    """A checkpoint is missing, unreadable, of an unknown family, or not trusted."""


class UntrustedCheckpointError(CheckpointError):
    """Loading the checkpoint would unpickle it (run code) and the caller did not say it trusts it."""


class CalibrationError(QcalError):
    """The calibration data cannot be used (empty, undecodable, wrong shape)."""


class ExportError(QcalError):
    """An artifact could not be written or does not satisfy its target profile."""
