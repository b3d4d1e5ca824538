"""Calibration data for qcal: sources, degradations, mixes, selection, manifests and content hashes.

Imports nothing of qcal. Everything is lazy: a CalibSet describes its samples and decodes one at a time.
"""

from calib_sets import errors
from calib_sets.decode import ConversionWarning, decode_image
from calib_sets.degrade import Condition, Step
from calib_sets.diagnostics import BootstrapSpread, Coverage, bootstrap_spread, coverage
from calib_sets.errors import (
    CalibSetError,
    DegradationParamError,
    EmptyCalibSetError,
    RecipeError,
    SkippedFilesWarning,
    SourceNotFoundError,
    UndecodableImageError,
)
from calib_sets.manifest import Manifest, ManifestEntry
from calib_sets.mix import DegradationMix
from calib_sets.overlap import Overlap, overlap
from calib_sets.presets import QRID, named_condition
from calib_sets.recipes import Recipe
from calib_sets.sample import CalibSet, Item, Sample
from calib_sets.select import select
from calib_sets.sources import Source
from calib_sets.spec import load
from calib_sets.text import TextSample, TextSet

__all__ = ["QRID", "BootstrapSpread", "CalibSet", "CalibSetError", "Condition", "ConversionWarning", "Coverage",
           "DegradationMix", "DegradationParamError", "EmptyCalibSetError", "Item", "Learned", "LearnedFileError", "Manifest", "ManifestEntry",
           "Overlap", "Recipe", "RecipeError", "Sample", "SkippedFilesWarning", "Source", "SourceNotFoundError",
           "Step", "TextSample", "TextSet", "UndecodableImageError", "bootstrap_spread", "coverage", "decode_image",
           "errors", "load", "named_condition", "overlap", "select"]


def __getattr__(name: str) -> object:
    """Learned (a saved MetaAug T applied to a set) imports torch: loaded on first use only."""
    if name in ("Learned", "LearnedFileError"):
        from calib_sets import learned

        return getattr(learned, name)
    raise AttributeError(f"module 'calib_sets' has no attribute {name!r}")
