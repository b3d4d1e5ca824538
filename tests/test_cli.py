import subprocess
import sys
from pathlib import Path

from qcal.cli import main


def test_help_explains_options() -> None:
    out = subprocess.run([sys.executable, "-m", "qcal.cli", "quantize", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for opt in ("--calib", "--target", "--trust-checkpoint", "--observer", "--eval", "ort-cpu", "tensorrt"):
        assert opt in out


def test_config_round_trip(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    p = tmp_path / "c.toml"
    p.write_text(text.replace('observer = "blend"', 'observer = "entropy"'))
    assert main(["config", "--config", str(p)]) == 0
    assert 'observer = "entropy"' in capsys.readouterr().out
    p.write_text("bogus = 1\n")
    assert main(["config", "--config", str(p)]) == 2
    assert "unknown key(s) ['bogus']" in capsys.readouterr().err


def test_untrusted_checkpoint_exit_code(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ck = tmp_path / "m.pt"
    ck.write_bytes(b"\x80\x02")
    assert main(["quantize", str(ck), "--calib", "bundled:vtest", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "runs code" in err
