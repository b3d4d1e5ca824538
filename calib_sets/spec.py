"""`load(spec)`: one entry point that turns whatever a user or the CLI gives into a CalibSet."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from calib_sets.errors import SourceNotFoundError
from calib_sets.sample import CalibSet
from calib_sets.sources import Source
from calib_sets.video import VIDEO_EXTS

_BUNDLED = re.compile(r"bundled:(\w+)(?:\[(\d*):(\d*)(?::(\d+))?\])?")


def load(spec: CalibSet | str | Path | Sequence[str | Path]) -> CalibSet:
    """A CalibSet from: a CalibSet (returned as is); a folder of images; an image file; a video file;
    a .toml recipe; 'bundled:NAME' or 'bundled:NAME[a:b]' / 'bundled:NAME[a:b:step]' (frame numbers
    a <= f < b, every step-th); 'imagefolder:DIR' (a classification set, DIR/<class>/<images>); or a list
    of any of these (concatenated in order)."""
    if isinstance(spec, CalibSet):
        return spec
    if isinstance(spec, list | tuple):
        if not spec:
            raise SourceNotFoundError("load([]): no calibration source given; pass a folder, a video, a .toml "
                                      "recipe or 'bundled:vtest'.")
        out = load(spec[0])
        for s in spec[1:]:
            out = out | load(s)
        return out
    s = str(spec)
    m = _BUNDLED.fullmatch(s)
    if m:
        frames = None
        if m.group(2) is not None:
            frames = range(int(m.group(2) or 0), int(m.group(3) or 10**9), int(m.group(4) or 1))
        return Source.bundled(m.group(1), frames)
    if s.startswith("imagefolder:"):
        return Source.image_folder(s[len("imagefolder:"):])
    if s.startswith("bundled:"):
        raise SourceNotFoundError(f"{s!r} is not a bundled spec; write 'bundled:vtest' or 'bundled:vtest[0:320]'.")
    p = Path(s)
    if p.suffix.lower() == ".toml":
        from calib_sets.recipes import Recipe

        return Recipe.read(p).build()
    if p.suffix.lower() in VIDEO_EXTS and not p.is_dir():
        return Source.video(p)
    return Source.images(p)
