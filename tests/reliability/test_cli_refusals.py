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
    p.write_bytes(b"\x80\x02")   # passes the preflight; every case here must fail before it is opened
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


@pytest.mark.parametrize(("content", "needle"), [
    (b"hello, not a model\n", "is not a PyTorch checkpoint"),
    (b"PK\x03\x04" + bytes(64), "damaged zip archive"),
])
def test_a_pt_that_is_no_torch_file_is_refused_before_torch(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                            content: bytes, needle: str) -> None:
    p = tmp_path / "x.pt"
    p.write_bytes(content)
    refused(capsys, quantize(p, tmp_path), needle)


def test_a_zip_without_data_pkl_and_other_files_are_refused(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    import zipfile

    p = tmp_path / "x.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hi")
    refused(capsys, quantize(p, tmp_path), "not one torch.save wrote (no data.pkl)")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    refused(capsys, quantize(onnx_file, tmp_path), "ONNX input is not supported yet")


def test_a_real_checkpoint_cut_in_half_is_refused_from_its_zip_directory(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path) -> None:
    import torch

    p = tmp_path / "half.pt"
    full = tmp_path / "full.pt"
    torch.save({"model": torch.nn.Linear(4, 4)}, full)
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    refused(capsys, quantize(p, tmp_path), "damaged zip archive")


def test_an_immutable_output_folder_is_refused_before_the_work(capsys: pytest.CaptureFixture[str], ckpt: Path,
                                                               tmp_path: Path) -> None:
    import shutil
    import subprocess

    out = tmp_path / "o"
    out.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(out)]).returncode != 0:
        pytest.skip("chattr +i needs root and a file system that supports it")
    try:
        refused(capsys, quantize(ckpt.with_name("real.pt"), tmp_path), "does not exist")   # sanity: argv shape
        torch_pt = tmp_path / "t.pt"
        torch_pt.write_bytes(b"\x80\x02")   # a pickle's first bytes: passes the sniff, never opened
        refused(capsys, quantize(torch_pt, tmp_path), "cannot be replaced", "chattr -i")
        assert out.is_dir() and not any(p.name.startswith(".o.qcal-") for p in tmp_path.iterdir())
    finally:
        subprocess.run(["chattr", "-i", str(out)])


def test_a_single_image_bomb_is_refused_when_the_set_is_described(capsys: pytest.CaptureFixture[str], ckpt: Path,
                                                                  tmp_path: Path) -> None:
    from tests.reliability.test_streams import png_bomb

    bomb = png_bomb(tmp_path / "bomb.png")
    argv = quantize(ckpt, tmp_path)
    argv[argv.index("--calib") + 1] = str(bomb)
    refused(capsys, argv, "--calib", "header says 2500 Mpx")
