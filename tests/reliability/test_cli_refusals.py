"""Cases the reliability catalogue (benchmarks/reliability.py) found ending in a traceback, a silent exit 0 or a
message that does not name the problem: each is now exit 2 before any work, naming the value and the fix."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from qcal.cli import main


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("qcal: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    p = tmp_path / "m.pt"
    p.write_bytes(b"x")   # passes the preflight; every case here must fail before it is opened
    return p


def quantize(ckpt: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["quantize", str(ckpt), "--trust-checkpoint", "--calib", "bundled:vtest[0:8]", "-o", str(tmp_path / "o"),
            *extra]


@pytest.mark.parametrize(("flags", "needles"), [
    (["--passes", ","], ("--passes", "names no pass")),
    (["--scheme", "w4a16"], ("--scheme w4a16 is for LLMs", "drop --scheme")),
    (["--offload", "layers"], ("--offload layers is for LLMs",)),
])
def test_flags_that_did_nothing_are_refused(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path,
                                           flags: list[str], needles: tuple[str, ...]) -> None:
    refused(capsys, quantize(ckpt, tmp_path, *flags), *needles)
    assert not (tmp_path / "o").exists()


def test_an_output_name_too_long_for_the_file_system(capsys: pytest.CaptureFixture[str], ckpt: Path,
                                                     tmp_path: Path) -> None:
    argv = quantize(ckpt, tmp_path)
    argv[-1] = str(tmp_path / ("x" * 300))
    refused(capsys, argv, "a folder name of 300 bytes is too long", "at most 223")


@pytest.mark.parametrize(("text", "needles"), [
    (b"\xff\xfe\x00garbage", ("is not text (UTF-8)",)),
    (b"[adaquant]\nlr_weight = -1.0\n", ("adaquant.lr_weight=-1.0", ">= 0")),
])
def test_config_files_name_the_file_and_key(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path,
                                            text: bytes, needles: tuple[str, ...]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(text)
    refused(capsys, quantize(ckpt, tmp_path, "--config", str(cfg)), str(cfg), *needles)


def test_a_folder_of_only_bad_images_names_them(capsys: pytest.CaptureFixture[str], ckpt: Path,
                                                tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (imgs / "empty.jpg").write_bytes(b"")
    argv = quantize(ckpt, tmp_path)
    argv[argv.index("--calib") + 1] = str(imgs)
    with pytest.warns(UserWarning):
        refused(capsys, argv, "holds no decodable image", "cut.png", "empty.jpg")


def test_a_recipe_resizing_to_an_absurd_size(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    r = tmp_path / "r.toml"
    r.write_text('source = "a.png"\nimgsz = 100000\n')
    argv = quantize(ckpt, tmp_path)
    argv[argv.index("--calib") + 1] = str(r)
    refused(capsys, argv, "imgsz=100000 is above 8192 px")


@pytest.mark.parametrize(("flags", "needles"), [
    (["--max-drop", "=0.1"], ("the condition name before '=' is empty",)),
    (["--max-drop", "0.05", "--precisions", ","], ("--precisions ',' names no precision",)),
])
def test_check_refuses_empty_names(capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str],
                                   needles: tuple[str, ...]) -> None:
    report = tmp_path / "r.json"
    report.write_text('{"schema": "qcal.robustness/1"}')
    refused(capsys, ["check", str(report), *flags], *needles)


def test_engine_and_lint_check_their_arguments_first(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    (tmp_path / "f").write_text("a file")
    (tmp_path / "d").mkdir()
    eng = ["engine", str(model), "-o"]
    refused(capsys, [*eng, str(tmp_path / "e.engine"), "--workspace-mb", "0"], "--workspace-mb 0: must be >= 1")
    refused(capsys, [*eng, str(tmp_path / "d")], "-o", "is a folder")
    refused(capsys, [*eng, str(tmp_path / "f" / "e.engine")], "is a file, so no folder can be made there")
    refused(capsys, [*eng, str(tmp_path / "e.engine"), "--timing-cache", str(tmp_path / "d")], "--timing-cache")
    refused(capsys, ["lint", str(model)], "is empty (0 bytes)")
    refused(capsys, ["lint", str(model), "--limit", "-1"], "--limit -1: must be >= 0")
    refused(capsys, ["lint", str(model), "--json", str(tmp_path / "d")], "--json", "is a folder")
    refused(capsys, ["lint", str(model), "--json", str(tmp_path / "f" / "j.json")], "is a file")


def test_a_sweep_key_typo_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text('evall = "bundled:vtest[360:370]"\n[[models]]\nname = "m"\ncheckpoint = "m.pt"\n')
    refused(capsys, ["bench", str(sweep), "-o", str(tmp_path / "r")], "unknown key(s) ['evall']")
