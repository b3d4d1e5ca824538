from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib_sets import (
    CalibSetError,
    EmptyCalibSetError,
    SkippedFilesWarning,
    Source,
    SourceNotFoundError,
    coverage,
)
from calib_sets import select as select_

from .conftest import write_image


def _yolo(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for split, n in (("train", 6), ("val", 4)):
        for i in range(n):
            write_image(root / "images" / split / f"{split}{i}.jpg", i, (20, 40))
            if i < n - 1:  # the last image has no label file: an image without objects
                rows = [f"{i % 2} 0.5 0.5 0.2 0.4"] + (["2 0.1 0.1 0.3 0.1 0.3 0.3"] if i == 0 else [])
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"{split}{i}.txt").write_text("\n".join(rows) + "\n")
    y = tmp_path / "data.yaml"
    y.write_text("path: ds\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n  2: dog\n")
    return y


def test_yolo_dataset_keeps_labels(tmp_path: Path) -> None:
    y = _yolo(tmp_path)
    val = Source.yolo_dataset(y, split="val")
    assert val.keys() == ["val0.jpg", "val1.jpg", "val2.jpg", "val3.jpg"]
    s = val[0]
    assert s.labels is not None and s.labels.shape == (2, 5) and s.image.shape == (20, 40, 3)
    assert np.allclose(s.labels[1], [2, 0.2, 0.2, 0.2, 0.2])  # polygon -> its box
    assert val[3].labels is not None and val[3].labels.shape == (0, 5)
    assert len(Source.yolo_dataset(y, split="train")) == 6
    cov = coverage(val)
    assert cov.labelled == 4 and cov.classes == {0: 2, 1: 1, 2: 1} and cov.images_per_class[2] == 1
    strat = select_(Source.yolo_dataset(y, split="train"), 3, strategy="stratified", by="class")
    assert len(strat) == 3
    with pytest.raises(SourceNotFoundError, match=r"no split 'test'.*\['train', 'val'\]"):
        Source.yolo_dataset(y, split="test")
    with pytest.raises(SourceNotFoundError):
        Source.yolo_dataset(tmp_path / "none.yaml")


def test_yolo_split_as_a_list_file(tmp_path: Path) -> None:
    y = _yolo(tmp_path)
    (tmp_path / "ds" / "val.txt").write_text("images/val/val1.jpg\nimages/val/val2.jpg\n")
    y.write_text("path: ds\nval: val.txt\nnames: [a, b, c]\n")
    assert Source.yolo_dataset(y).keys() == ["val1.jpg", "val2.jpg"]
    (tmp_path / "ds" / "labels" / "val" / "val1.txt").write_text("0 1 2\n")
    with pytest.raises(CalibSetError, match="neither"):
        next(iter(Source.yolo_dataset(y)))


def test_coco(tmp_path: Path) -> None:
    imgs = tmp_path / "img"
    for i in range(3):
        write_image(imgs / f"{i}.png", i, (50, 100))
    data = {"images": [{"id": 10 + i, "file_name": f"{i}.png", "width": 100, "height": 50} for i in range(4)],
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
            "annotations": [{"image_id": 10, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
                            {"image_id": 10, "category_id": 1, "bbox": [0, 0, 100, 50], "iscrowd": 1},
                            {"image_id": 11, "category_id": 1, "bbox": [50, 25, 50, 25]}]}
    j = tmp_path / "ann.json"
    j.write_text(json.dumps(data))
    with pytest.warns(SkippedFilesWarning):  # 3.png is listed but missing
        cs = Source.coco(j, imgs)
    assert cs.keys() == ["0.png", "1.png", "2.png"] and cs.skipped == [str(imgs / "3.png")]
    first = cs[0].labels
    assert first is not None and np.allclose(first, [[1, 0.2, 0.2, 0.2, 0.2]])  # dog = class 1 (ids sorted)
    assert np.allclose(cs[1].labels, [[0, 0.75, 0.75, 0.5, 0.5]])  # type: ignore[arg-type]
    assert cs[2].labels is not None and len(cs[2].labels) == 0
    j.write_text("{}")
    with pytest.raises(CalibSetError, match="not a COCO"):
        Source.coco(j, imgs)
    j.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": 1, "height": 1}]}))
    with pytest.warns(SkippedFilesWarning), pytest.raises(EmptyCalibSetError, match="none of its 1 images"):
        Source.coco(j, imgs)
