from __future__ import annotations

from pathlib import Path

import pytest

from qcal.bench.spec import calibration_set, parse_conditions, parse_precisions
from qcal.errors import ConfigError

RECIPE = str(Path(__file__).resolve().parents[2] / "calib_sets" / "recipes" / "vtest-qrid.toml")


def test_precisions_parse_and_errors(tmp_path: Path) -> None:
    ps = parse_precisions("fp32,fp16,int8-dynamic,int8-clean,int8-mixed", RECIPE)
    assert [(p.name, p.kind) for p in ps] == [("fp32", "fp32"), ("fp16", "fp16"), ("int8-dynamic", "dynamic"),
                                             ("int8-clean", "static"), ("int8-mixed", "static")]
    clean, mixed = ps[3], ps[4]
    assert clean.clean and not mixed.clean and not mixed.degrade      # the recipe has its own [mix]
    plain = parse_precisions("int8-mixed", "bundled:vtest[0:30]")[0]
    assert plain.degrade                                               # plain source: the QRID mix is added
    with pytest.raises(ConfigError, match="needs a calibration set"):
        parse_precisions("int8-clean", None)
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        parse_precisions("fp32,int4", None)
    with pytest.raises(ConfigError, match="given twice"):
        parse_precisions("fp32,fp32", None)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_precisions(f"onnx:{tmp_path / 'x.onnx'}", None)
    (tmp_path / "peer.onnx").write_bytes(b"\x80\x02")
    assert parse_precisions(f"onnx:ort={tmp_path / 'peer.onnx'}", None)[0].name == "ort"


def test_clean_and_mixed_calibration_sets_differ_only_by_degradation() -> None:
    clean, mixed = parse_precisions("int8-clean,int8-mixed", RECIPE)
    cs_clean, cs_mixed = calibration_set(clean, 640), calibration_set(mixed, 640)
    assert len(cs_clean) == len(cs_mixed)
    assert set(cs_clean.conditions()) == {"clean"}
    assert "noise_medium" in set(cs_mixed.conditions()) and cs_clean.content_hash != cs_mixed.content_hash


def test_conditions(tmp_path: Path) -> None:
    names = lambda cs: ["clean" if c is None else c.name for c in cs]  # noqa: E731
    assert names(parse_conditions("qrid")) == ["clean", "noise_low", "noise_medium", "blur_low", "blur_medium",
                                               "low_contrast", "jpeg_heavy", "mixed"]
    assert names(parse_conditions("noise_low, gaussian_blur_l3")) == ["clean", "noise_low", "gaussian_blur_l3"]
    with pytest.raises(ConfigError, match="fog"):
        parse_conditions("fog")
    with pytest.raises(ConfigError, match="twice"):
        parse_conditions("noise_low,noise_low")
    f = tmp_path / "c.toml"
    f.write_text('[conditions.dusk]\nsteps = [{ kind = "low_light", brightness = 0.5, gamma = 1.5 }]\n')
    [_, dusk] = parse_conditions(str(f))
    assert dusk is not None and dusk.name == "dusk" and dusk.steps[0].kind == "low_light"
    f.write_text('[other]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"\[conditions.<name>\]"):
        parse_conditions(str(f))
