"""The built wheel is what users type-check against: it ships py.typed for each package and qcal's version."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import qcal

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_py_typed_and_the_code_version(tmp_path: Path) -> None:
    src = tmp_path / "src"   # a copy: building in place would leave build/ and *.egg-info in the checkout
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for package in ("qcal", "calib_sets", "exporters"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("qcal-*.whl"))
    assert wheel.name.startswith(f"qcal-{qcal.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"qcal/py.typed", "calib_sets/py.typed", "exporters/py.typed"} <= names
