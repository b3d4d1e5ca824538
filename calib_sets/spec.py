"""`load(spec)`: one entry point that turns whatever a user or the CLI gives into a CalibSet.

Defined in calib_sets.recipes (a spec can be a .toml recipe and a recipe's sources are specs: one recursion, one
module); this is its documented address.
"""

from __future__ import annotations

from calib_sets.recipes import load

__all__ = ["load"]
