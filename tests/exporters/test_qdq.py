"""The QuantTable contract (exporters.quant_table). Exports of tables the engine builds are checked in
tests/test_engine_export.py (they need qcal, which exporters' tests do not import)."""

from pathlib import Path

import pytest

from exporters import QuantTable, TensorQuant
from exporters.errors import ExporterError


def test_quant_table_roundtrip_and_errors(tmp_path: Path) -> None:
    t = QuantTable({"a": TensorQuant("uint8", (0.0123456789,), (3,), rmin=-0.04, rmax=3.1),
                    "w": TensorQuant("int8", (0.1, 0.2), (0, 0), axis=0, kind="weight")}, ("n1",), {"n1": "why"},
                   "ort-cpu", {"k": "v"})
    p = tmp_path / "t.json"
    t.save(p)
    assert QuantTable.load(p) == t
    with pytest.raises(ExporterError, match="finite and > 0"):
        TensorQuant("int8", (0.0,), (0,))
    with pytest.raises(ExporterError, match="dtype"):
        TensorQuant("int7", (1.0,), (0,))
    p.write_text("{not json")
    with pytest.raises(ExporterError, match="not valid JSON"):
        QuantTable.load(p)
