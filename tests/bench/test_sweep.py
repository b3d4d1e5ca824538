"""Sweep files: a frozen typed config that round-trips to TOML and rejects unknown keys, and a one-model sweep
whose report equals `qcal bench` given the same options on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qcal.bench.sweep import Sweep, SweepModel, SweepRecipe
from qcal.cli import demo_checkpoint, main
from qcal.config import QuantConfig
from qcal.errors import ConfigError, QcalError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "benchmarks" / "recipes" / "scale-sweep.toml"


def test_example_loads_resolves_paths_and_round_trips() -> None:
    s = Sweep.load(EXAMPLE)
    assert s.precision_spec() == ["fp32", "int8-clean", "int8-mixed",
                                  f"int8:qrid64={ROOT / 'benchmarks' / 'recipes' / 'vtest64-qrid.toml'}"]
    assert Path(s.calib or "").resolve() == ROOT / "calib_sets" / "recipes" / "vtest-qrid.toml"
    assert s.eval == "bundled:vtest[360:480:2]" and s.condition_spec() == "qrid"   # specs stay as written
    assert s.config == QuantConfig(imgsz=640, calib_size=32) and s.threads == 1
    import tomllib

    assert Sweep.from_dict(tomllib.loads(s.to_toml())) == s
    assert Sweep.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize("text,match", [
    ('eval = "x"\nlatncy_runs = 0\n[[models]]\nname = "a"\ncheckpoint = "a.pt"\n',
     r"sweep: unknown key\(s\) \['latncy_runs'\]; allowed keys are \[.*'latency_runs'"),
    ('eval = "x"\n[[models]]\nname = "a"\ncheckpoint = "a.pt"\npath = "b"\n',
     r"sweep.models\[0\]: unknown key\(s\) \['path'\]; allowed keys are \['checkpoint', 'name', 'package'\]"),
    ('eval = "x"\n[config]\nimgsz = 641\n[[models]]\nname = "a"\ncheckpoint = "a.pt"\n', "multiple of 32"),
    ('eval = "x"\n', r"no \[\[models\]\]"),
    ('[[models]]\nname = "a"\ncheckpoint = "a.pt"\n', "no eval key"),
    ('eval = "x"\nthreads = "2"\n[[models]]\nname = "a"\ncheckpoint = "a.pt"\n', r"sweep.threads='2': expected int"),
    ('eval = "x"\n[[models]]\nname = "a/b"\ncheckpoint = "a.pt"\n', "names the report folder"),
    ('eval = "x"\n[[models]]\nname = "a"\ncheckpoint = "a"\npackage = "no_such_pkg_q"\n', "is not installed"),
])
def test_bad_sweep_files_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        Sweep.load(p)


def test_cli_refuses_options_that_belong_in_the_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(EXAMPLE), "--threads", "4", "--calib", "x", "-o", "unused"]) == 2
    err = capsys.readouterr().err
    assert "['--calib', '--threads'] belong in the sweep file" in err
    assert main(["bench", "model.pt", "-o", "unused"]) == 2
    assert "needs --eval" in capsys.readouterr().err


def _untimed(data: dict[str, Any], out: Path) -> str:
    d = {k: v for k, v in data.items() if k not in ("seconds", "latency_ms", "command")}
    d["precisions"] = [{k: str(v).replace(str(out), "OUT") if k == "file" else v
                        for k, v in p.items() if k != "quantize_seconds"} for p in d["precisions"]]
    return json.dumps(d, sort_keys=True)


@pytest.mark.slow
def test_one_model_sweep_equals_the_command_line(tmp_path: Path) -> None:
    try:
        ckpt = demo_checkpoint()
    except QcalError:
        pytest.skip("the fall-detection checkpoint is not installed (make test installs it)")
    recipe = ROOT / "benchmarks" / "recipes" / "vtest64-qrid.toml"
    sweep = Sweep(eval="bundled:vtest[450:480:3]", calib="bundled:vtest[0:40]", precisions=("fp32", "int8-clean"),
                  recipes=(SweepRecipe("qrid64", str(recipe)),), conditions=("noise_medium", "blur_medium"),
                  config=QuantConfig(imgsz=320, calib_size=4), latency_runs=0, bootstrap=20, threads=1,
                  models=(SweepModel("fall", "models/best.pt", package="fall_detection"),))
    (tmp_path / "sweep.toml").write_text(sweep.to_toml())
    (tmp_path / "cfg.toml").write_text(sweep.config.to_toml())
    assert main(["bench", str(tmp_path / "sweep.toml"), "-o", str(tmp_path / "s"), "--trust-checkpoint",
                 "--no-progress"]) == 0
    assert main(["bench", str(ckpt), "--eval", sweep.eval, "--calib", "bundled:vtest[0:40]", "--conditions",
                 "noise_medium,blur_medium", "--precisions", f"fp32,int8-clean,int8:qrid64={recipe}",
                 "--config", str(tmp_path / "cfg.toml"), "--latency-runs", "0", "--bootstrap", "20", "--threads", "1",
                 "-o", str(tmp_path / "c"), "--trust-checkpoint", "--no-progress"]) == 0
    via_sweep = json.loads((tmp_path / "s" / "fall" / "report.json").read_text())
    via_cli = json.loads((tmp_path / "c" / "report.json").read_text())
    assert len(via_cli["cells"]) == 3 and all(len(row) == 3 for row in via_cli["cells"].values())
    assert _untimed(via_sweep, tmp_path / "s" / "fall") == _untimed(via_cli, tmp_path / "c")
    index = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert index["cells"] == 9 and Sweep.from_dict(index["sweep"]).models[0].name == "fall"
