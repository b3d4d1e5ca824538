"""Atomic ONNX writes and metadata stamping (qcal version, config, calibration-set hash)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import onnx

from exporters.errors import ExporterError


def stamp_metadata(model: onnx.ModelProto, values: Mapping[str, str]) -> onnx.ModelProto:
    """Set (replace) metadata_props entries; ONNX Runtime exposes them as custom_metadata_map."""
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    return model


def read_metadata(path_or_model: str | Path | onnx.ModelProto) -> dict[str, str]:
    if isinstance(path_or_model, onnx.ModelProto):
        m = path_or_model
    else:
        try:
            m = onnx.load(str(path_or_model), load_external_data=False)
        except Exception as e:   # DecodeError & co. on a file that is not a model
            raise ExporterError(f"{path_or_model} is not a readable ONNX model ({type(e).__name__}: {e}); pass "
                                "the .onnx file qcal (or your exporter) wrote.") from None
    return {p.key: p.value for p in m.metadata_props}


def atomic_save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save to a temp file in the same folder and rename, so a crash never leaves half a model."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
