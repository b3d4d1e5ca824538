"""qcal's version: a leaf module (imports nothing), so every results writer and cache key can read it without
importing the package facade (qcal/__init__.py), which would close an import cycle through it."""

__version__ = "0.2.2"
