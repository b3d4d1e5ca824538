"""The built wheel is what users type-check against: it ships py.typed for each package and qcal's version."""

import subprocess
import sys
import zipfile
from pathlib import Path

import qcal

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_py_typed_and_the_code_version(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("qcal-*.whl"))
    assert wheel.name.startswith(f"qcal-{qcal.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"qcal/py.typed", "calib_sets/py.typed", "exporters/py.typed"} <= names
