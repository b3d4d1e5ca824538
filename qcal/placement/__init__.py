"""Where precision goes: which layers stay float (keep_float) and per-layer bit allocation (alloc)."""
