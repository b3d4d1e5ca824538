"""Learned augmentation of calibration data (MetaAug's transformation network T)."""

from qcal.augment.tnet import Augmenter, TNetSpec, TransformNet

__all__ = ["Augmenter", "TNetSpec", "TransformNet"]
