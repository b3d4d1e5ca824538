"""One CLI (issue 22): every option two `qcal` subcommands share has the same flags, type, choices and default,
read off the parsers qcal.cli builds; every default is shown in --help; every subcommand's help ends with an
example; `qcal --version`; `int8` as a precision; `qcal engine` non-zero when it built nothing; output files with
the user's umask."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporters.outset import write_manifest
from exporters.quant_table import atomic_write_text
from qcal.bench.spec import parse_precisions
from qcal.cli import build_parser, main
from qcal.cli.options import options_of, subcommands
from qcal.errors import ConfigError
from qcal.version import __version__

# Options whose default is the subcommand's own, by what the option means there (flags and type must still agree):
OWN_DEFAULT = {
    "out": "quantize/demo write an output set (out/), bench a report folder holding its cell cache (report/), "
           "engine one engine file (required)",
}
PARSERS = subcommands(build_parser())


def shared_options() -> dict[str, dict[str, argparse.Action]]:
    """{dest: {subcommand: action}} for every option at least two subcommands take."""
    by_dest: dict[str, dict[str, argparse.Action]] = {}
    for name, p in PARSERS.items():
        for dest, action in options_of(p).items():
            by_dest.setdefault(dest, {})[name] = action
    return {d: a for d, a in by_dest.items() if len(a) > 1}


def test_the_parsers_are_all_there_and_share_options() -> None:
    assert set(PARSERS) == {"quantize", "demo", "bench", "check", "lint", "engine", "config"}
    shared = shared_options()
    # the ones issue 22 found split between quantize and bench are now on both
    for dest in ("threads", "target", "observer", "config", "calib", "eval", "trust_checkpoint", "no_progress"):
        assert {"quantize", "bench"} <= set(shared[dest]), dest


@pytest.mark.parametrize("dest", sorted(shared_options()))
def test_a_shared_option_is_the_same_option_everywhere(dest: str) -> None:
    actions = shared_options()[dest]

    def signature(a: argparse.Action, with_default: bool) -> tuple[object, ...]:
        return (tuple(a.option_strings), type(a).__name__, a.type, tuple(a.choices or ()), a.nargs, a.const,
                a.metavar, a.default if with_default else None)

    sigs = {name: signature(a, dest not in OWN_DEFAULT) for name, a in actions.items()}
    assert len(set(sigs.values())) == 1, f"--{dest} differs between subcommands: {sigs}"


def _help(name: str) -> str:
    return " ".join(PARSERS[name].format_help().split())   # one line: wrapping does not split what we look for


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_shows_every_default_and_ends_with_an_example(name: str) -> None:
    text = _help(name)
    for dest, a in options_of(PARSERS[name]).items():
        if a.default not in (None, False):
            assert f"(default: {a.default})" in text, f"qcal {name} --help does not show --{dest}'s default"
    epilog = PARSERS[name].epilog or ""
    assert epilog.startswith("example") and f"qcal {name}" in epilog, f"qcal {name} --help has no example"


def test_help_states_the_config_defaults_of_options_left_to_the_config() -> None:
    text = _help("quantize")
    assert "(default: the config's target, ort-cpu)" in text and "(default: the config's observer, blend)" in text
    assert "int8 for short" in _help("bench")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qcal {__version__}"


def test_int8_is_int8_clean(tmp_path: Path) -> None:
    precs = parse_precisions("fp32,int8", "bundled:vtest[0:8]")
    assert [p.name for p in precs] == ["fp32", "int8-clean"] and precs[1].clean and precs[1].kind == "static"
    with pytest.raises(ConfigError, match=r"'int8-clean' is given twice \(int8 is another name for int8-clean\)"):
        parse_precisions(["int8", "int8-clean"], "bundled:vtest[0:8]")
    with pytest.raises(ConfigError, match="int8-clean needs a calibration set"):
        parse_precisions("int8", None)
    import qcal  # the Python API reads precision names the same way (refused here before any model is loaded)

    with pytest.raises(ConfigError, match="given twice"):
        qcal.robustness("no-such.pt", eval="bundled:vtest[360:368]", calib="bundled:vtest[0:8]",
                        precisions="int8,int8-clean", out=tmp_path / "r")


def test_bench_flags_that_belong_in_a_sweep_file_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sweep.toml", "--target", "tensorrt", "--precisions", "fp32,int8"]) == 2
    err = capsys.readouterr().err
    assert "'--target', '--precisions'" in err and "[config] for --config, --target and --observer" in err


def test_threads_is_checked_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["quantize", str(tmp_path / "m.pt"), "--calib", "bundled:vtest[0:8]", "--threads", "0",
                 "-o", str(tmp_path / "o")]) == 2
    assert "--threads" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_lint_target_has_quantizes_choices_and_refuses_a_target_without_rules(
        capsys: pytest.CaptureFixture[str], tiny_conv_onnx: Path) -> None:
    assert main(["lint", str(tiny_conv_onnx), "--target", "ort-cpu"]) == 2
    assert "lint rules only for tensorrt" in capsys.readouterr().err
    assert main(["lint", str(tiny_conv_onnx), "--target", "tensorrt"]) == 0


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path | str) -> int:
    return Path(p).stat().st_mode & 0o777


@pytest.mark.usefixtures("umask_027")
def test_engine_without_tensorrt_exits_2_unless_only_the_plan_is_asked(
        capsys: pytest.CaptureFixture[str], tiny_conv_onnx: Path, tmp_path: Path) -> None:
    from exporters.tensorrt import trt_version

    if trt_version() is not None:
        pytest.skip("TensorRT imports here: qcal engine builds")
    out = tmp_path / "model.engine"
    assert main(["engine", str(tiny_conv_onnx), "-o", str(out)]) == 2
    cap = capsys.readouterr()
    assert "trtexec --onnx=" in cap.out and "--plan-only" in cap.err and "TensorRT is not installed" in cap.err
    assert main(["engine", str(tiny_conv_onnx), "-o", str(out), "--plan-only"]) == 0
    (build,) = tmp_path.glob("*.build.json")
    assert build.name == "model.engine.build.json"   # -o as given, not renamed
    assert json.loads(build.read_text())["built"] is False
    assert _mode(build) == 0o640   # 0o666 less the umask 027, not mkstemp's 0600


@pytest.mark.usefixtures("umask_027")
def test_files_written_in_place_get_the_users_umask(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    assert main(["lint", str(tiny_conv_onnx), "--json", str(tmp_path / "lint.json")]) == 0
    assert _mode(tmp_path / "lint.json") == 0o640
    atomic_write_text(tmp_path / "report.json", "{}")   # what qcal bench writes into its report folder
    assert _mode(tmp_path / "report.json") == 0o600
    write_manifest(tmp_path, ["report.json"])
    assert _mode(tmp_path / "report.json") == 0o640 and _mode(tmp_path / "qcal-set.json") == 0o640
