"""Calibration data: sources, samples and content hashes. Imports nothing of qcal."""

from calib_sets.errors import CalibSetError, EmptyCalibSetError, SourceNotFoundError, UndecodableImageError
from calib_sets.sample import CalibSet, Item, Sample
from calib_sets.sources import Source, decode_image, load

__all__ = ["CalibSet", "CalibSetError", "EmptyCalibSetError", "Item", "Sample", "Source", "SourceNotFoundError",
           "UndecodableImageError", "decode_image", "load"]
