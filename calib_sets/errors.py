"""Errors of calib_sets (it imports nothing of qcal). Messages name the source, the problem and the fix."""


class CalibSetError(Exception):
    """Base of every error calib_sets raises on purpose."""


class SourceNotFoundError(CalibSetError, FileNotFoundError):
    """A path given as a source does not exist."""


class EmptyCalibSetError(CalibSetError):
    """A source (after its filters) holds no usable sample."""


class UndecodableImageError(CalibSetError):
    """An image file named explicitly (or a video frame) does not decode."""


class DegradationParamError(CalibSetError, ValueError):
    """A degradation or mix parameter is out of its range, of the wrong type, or unknown."""


class RecipeError(CalibSetError, ValueError):
    """A TOML recipe is malformed: unknown key, wrong type, or a value out of range."""


class SkippedFilesWarning(UserWarning):
    """Some inputs of a source were unreadable and left out (they are listed in CalibSet.skipped)."""


class SetTooLargeError(RecipeError):
    """An operation that visits every item (a manifest, items(), the content hash) met a lazy set too large to
    visit, e.g. `repeat = 1000000000000`; take the first items first."""
