"""The one place where qcal sets third-party library environment variables.

Ultralytics reads its settings at import time, tries to download a font and to auto-install packages, and
NNCF sends telemetry unless told not to. qcal calls :func:`prepare_third_party_env` right before it imports
such a library (never at ``import qcal``). Values the user already set are kept (``os.environ.setdefault``).

- ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=false``: no network access from Ultralytics.
- ``YOLO_CONFIG_DIR``: a writable per-user cache dir (``$XDG_CACHE_HOME/qcal/ultralytics``), holding the
  ``Arial.ttf`` Ultralytics wants; we copy matplotlib's DejaVuSans there so it never fetches one.
- ``NNCF_CI=1``: no NNCF telemetry (benchmarks only).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qcal"


def prepare_third_party_env() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("NNCF_CI", "1")
    cfg = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics")))
    font = cfg / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        font.parent.mkdir(parents=True, exist_ok=True)
        try:
            import matplotlib

            src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            if src.exists():
                shutil.copyfile(src, font)
        except ImportError:  # matplotlib is an Ultralytics dependency; without it Ultralytics fails anyway
            pass
