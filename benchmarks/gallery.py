"""Degradation gallery: one bundled vtest frame under every named condition and ladder level, labelled.

The frame is resized to 640 px (the resolution the degradations are defined at), degraded, then a crop is
shown at 1:1 so that noise grain, blur width and JPEG blocks look as the model sees them.

    .venv/bin/python benchmarks/gallery.py            # -> benchmarks/results/calib_sets_gallery.png
    .venv/bin/python benchmarks/gallery.py --frame 240 --crop 320x240 --out /tmp/gallery.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calib_sets import Source  # noqa: E402
from calib_sets.degrade import Condition, Step  # noqa: E402
from calib_sets.presets import EXTRA, LADDER, LEVELS, QRID, ladder_condition  # noqa: E402

LABEL_H = 40


def describe(c: Condition) -> str:
    def num(v: float | int) -> str:
        return f"{v:g}"

    def one(s: Step) -> str:
        return " ".join(f"{k}={num(v)}" for k, v in s.params if not (k == "angle" and v == 0))

    if len(c.steps) == 1:
        return one(c.steps[0])
    return " > ".join(f"{s.kind.replace('gaussian_', '')} {one(s)}" for s in c.steps)


def tile(img: np.ndarray, title: str, detail: str) -> np.ndarray:
    h, w = img.shape[:2]
    out = np.full((h + LABEL_H, w, 3), 255, np.uint8)
    out[:h] = img
    cv2.putText(out, title, (4, h + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(out, detail[:48], (4, h + 33), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (70, 70, 70), 1, cv2.LINE_AA)
    return out


def rows_of_conditions() -> list[list[Condition | None]]:
    """Row 1: clean + the QRID preset; row 2: clean + the extra named conditions; then one row per ladder."""
    rows: list[list[Condition | None]] = [[None, *QRID.values()], [None, *EXTRA.values()]]
    rows += [[None, *(ladder_condition(k, lv) for lv in LEVELS)] for k in LADDER]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frame", type=int, default=None, help="bundled vtest frame number (default: the middle one)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--crop", default="256x192", help="WxH crop shown at 1:1, centred on the frame")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calib_sets_gallery.png")
    a = ap.parse_args()
    frames = Source.bundled("vtest")
    pick = frames.subset([len(frames) // 2]) if a.frame is None else Source.bundled("vtest", frames=[a.frame])
    sample = pick.resized(a.imgsz)[0]
    img = sample.image
    cw, ch = (int(x) for x in a.crop.lower().split("x"))
    y0, x0 = max(0, (img.shape[0] - ch) // 2), max(0, (img.shape[1] - cw) // 2)

    def crop(x: np.ndarray) -> np.ndarray:
        return x[y0:y0 + ch, x0:x0 + cw]

    grid_rows = []
    ncols = max(len(r) for r in rows_of_conditions())
    for row in rows_of_conditions():
        tiles = [tile(crop(img), "clean", sample.key) if c is None else tile(crop(c(img, a.seed)), c.name, describe(c))
                 for c in row]
        blank = np.full_like(tiles[0], 255)
        grid_rows.append(np.hstack(tiles + [blank] * (ncols - len(tiles))))
    grid = np.vstack(grid_rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(a.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{a.out}: {grid.shape[1]}x{grid.shape[0]}, {sum(len(r) - 1 for r in rows_of_conditions())} degraded "
          f"tiles of {sample.key} at {a.imgsz} px (crop {cw}x{ch} at 1:1)")


if __name__ == "__main__":
    main()
