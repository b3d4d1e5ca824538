"""Labelled datasets as sources: an Ultralytics YOLO dataset yaml, or a COCO instances json.

Labels are kept as YOLO rows (N x 5: class cx cy w h, normalised to the image) in Sample.labels, so that
stratified selection, coverage and evaluation see the classes without decoding images.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from calib_sets.decode import IMAGE_EXTS
from calib_sets.errors import CalibSetError, EmptyCalibSetError, SourceNotFoundError
from calib_sets.files import Check, checked_items, list_images, name_some
from calib_sets.sample import CalibSet


def read_yolo_labels(path: Path) -> np.ndarray:
    """(N, 5) float32 rows `cls cx cy w h`; a polygon row (cls x1 y1 x2 y2 ...) becomes its bounding box.
    A missing label file means an image without objects (Ultralytics' convention)."""
    if not path.is_file():
        return np.zeros((0, 5), np.float32)
    rows = []
    for line in path.read_text().splitlines():
        v = [float(x) for x in line.split()]
        if len(v) == 5:
            rows.append(v)
        elif len(v) >= 7 and len(v) % 2 == 1:
            xs, ys = v[1::2], v[2::2]
            rows.append([v[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)])
        elif v:
            raise CalibSetError(f"{path}: label line {line!r} is neither 'cls cx cy w h' nor a polygon; fix the file.")
    return np.array(rows, np.float32).reshape(-1, 5)


def label_path(image: Path) -> Path:
    """.../images/<sub>/x.jpg -> .../labels/<sub>/x.txt (the last 'images' folder in the path)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_files(root: Path, entry: str | list[str], yaml_path: Path) -> list[Path]:
    files: list[Path] = []
    for e in [entry] if isinstance(entry, str) else entry:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            files += list_images(p, recursive=True)
        elif p.suffix == ".txt" and p.is_file():  # a list of image paths, relative to the dataset root
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    files.append(q if q.is_absolute() else (root / q).resolve())
        else:
            raise SourceNotFoundError(f"{yaml_path}: split path {p} does not exist; check 'path' and the split "
                                      "entries of the yaml.")
    return [f for f in files if f.suffix.lower() in IMAGE_EXTS]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as e:
        raise CalibSetError("reading a YOLO dataset yaml needs PyYAML: pip install pyyaml.") from e
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise CalibSetError(f"{path} is not a dataset yaml (a mapping with path/train/val/names).")
    return data


def yolo_dataset(yaml_path: Path, split: str, check: Check) -> CalibSet:
    if not yaml_path.is_file():
        raise SourceNotFoundError(f"dataset yaml {yaml_path} does not exist; check the path.")
    data = _read_yaml(yaml_path)
    if split not in data or not data[split]:
        have = [k for k in ("train", "val", "test") if data.get(k)]
        raise SourceNotFoundError(f"{yaml_path} has no split {split!r}; its splits: {have}.")
    root = Path(data.get("path") or ".")
    root = root if root.is_absolute() else (yaml_path.parent / root).resolve()
    files = _split_files(root, data[split], yaml_path)
    source = f"{yaml_path.name}:{split}"

    def labels(p: Path) -> Callable[[], np.ndarray | None]:
        return partial(read_yolo_labels, label_path(p))

    items, skipped = checked_items(files, source, check, labels=labels)
    if not items:
        raise EmptyCalibSetError(f"{yaml_path} split {split!r} holds no decodable image ({len(files)} listed, "
                                 f"{len(skipped)} unreadable{': ' + name_some(skipped, 5) if skipped else ''}); check the split's path.")
    return CalibSet(items, skipped=skipped)


def coco_dataset(json_path: Path, images_dir: Path, check: Check) -> CalibSet:
    """COCO instances json. Class = position of category_id among the json's categories sorted by id
    (contiguous 0..K-1, as YOLO trains); crowd annotations (iscrowd=1) are left out, as COCO eval ignores them.
    Images listed in the json but missing or unreadable on disk are skipped and listed."""
    for p, what in ((json_path, "COCO json"), (images_dir, "COCO image folder")):
        if not p.exists():
            raise SourceNotFoundError(f"{what} {p} does not exist; check the path.")
    try:
        data = json.loads(json_path.read_text())
        images = data["images"]
        cats = sorted(c["id"] for c in data.get("categories", []))
        anns = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CalibSetError(f"{json_path} is not a COCO instances json ({type(e).__name__}: {e}).") from e
    cls_of = {c: i for i, c in enumerate(cats)}
    by_image: dict[Any, list[list[float]]] = defaultdict(list)
    sizes = {im["id"]: (float(im["width"]), float(im["height"])) for im in images}
    for a in anns:
        if a.get("iscrowd", 0) or a["image_id"] not in sizes:
            continue
        w, h = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        by_image[a["image_id"]].append([cls_of.get(a["category_id"], -1), (x + bw / 2) / w, (y + bh / 2) / h,
                                        bw / w, bh / h])
    files = [images_dir / im["file_name"] for im in images]
    arrays = {images_dir / im["file_name"]: np.array(by_image[im["id"]], np.float32).reshape(-1, 5) for im in images}

    def labels(p: Path) -> Callable[[], np.ndarray | None]:
        return partial(arrays.__getitem__, p)

    items, skipped = checked_items(files, json_path.name, check, root=images_dir, labels=labels)
    if not items:
        raise EmptyCalibSetError(f"{json_path}: none of its {len(files)} images is readable under {images_dir}.")
    return CalibSet(items, skipped=skipped)


def image_folder(root: Path, check: Check) -> CalibSet:
    """A classification dataset in the ImageFolder layout: ROOT/<class name>/<images> (any depth below the class
    folder). Class index = position of the class folder's name in sorted order (as torchvision's ImageFolder).
    Each image carries one whole-image label row `cls 0.5 0.5 1 1`, so the classes are visible to stratified
    selection, diagnostics and evaluation through the same Sample.labels as detection datasets."""
    if not root.is_dir():
        raise SourceNotFoundError(f"image folder {root} does not exist; pass ROOT with one sub-folder per class.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise EmptyCalibSetError(f"image folder {root} has no class sub-folders; lay it out as ROOT/<class>/<image>.")
    files: list[Path] = []
    cls_of: dict[Path, int] = {}
    for i, name in enumerate(classes):
        for f in list_images(root / name, recursive=True):
            files.append(f)
            cls_of[f] = i

    def labels(p: Path) -> Callable[[], np.ndarray | None]:
        return partial(_whole_image_label, cls_of[p])

    # keys keep the root's own name (ROOT/<class>/<file>): the train and test folders of one dataset often reuse
    # file names, and overlap checks compare keys
    items, skipped = checked_items(files, f"imagefolder:{root}", check, root=root.resolve().parent, labels=labels)
    if not items:
        raise EmptyCalibSetError(f"image folder {root}: its {len(classes)} class folders hold no decodable image "
                                 f"({len(files)} files, {len(skipped)} unreadable).")
    return CalibSet(items, skipped=skipped)


def _whole_image_label(cls: int) -> np.ndarray:
    return np.array([[cls, 0.5, 0.5, 1.0, 1.0]], np.float32)
