"""calib_sets benchmark: build a QRID mix of the bundled vtest frames at 640 px, streaming, twice.

Each build runs in a fresh Python process that loads, resizes and degrades every sample one at a time and
hashes the produced pixels. Reported per run: peak RSS (getrusage), frames/s, the set's content hash (sources +
recipe + seed) and a hash of the actual output pixels; the two runs must agree on both.

    .venv/bin/python benchmarks/calib_sets_bench.py               # 512 frames -> benchmarks/results/calib_sets.{json,md}
    .venv/bin/python benchmarks/calib_sets_bench.py --frames 16 --out /tmp/bench   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calib_sets import CalibSet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> dict[str, object]:
    model, flags = platform.processor(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in INTERESTING_FLAGS if f in flags]}


def build(frames: int, imgsz: int, seed: int, clean: float) -> CalibSet:
    from calib_sets import DegradationMix, Source

    cs = Source.bundled("vtest").resized(imgsz).repeat(frames)  # cycles the bundled frames when frames > bundle
    return DegradationMix.qrid(clean=clean).apply(cs, seed=seed)


def child(frames: int, imgsz: int, seed: int, clean: float) -> None:
    """One streaming build; prints one JSON line."""
    import hashlib

    import cv2

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    cs = build(frames, imgsz, seed, clean)
    pixels = hashlib.sha256()
    n = 0
    for s in cs:  # one decoded + degraded frame alive at a time
        pixels.update(s.image.tobytes())
        n += 1
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    content_hash = cs.content_hash
    hash_seconds = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"frames": n, "seconds": seconds, "frames_per_s": n / seconds, "peak_rss_gb": rss / 2**20,
                      "rss_after_imports_gb": rss0 / 2**20, "content_hash": content_hash,
                      "hash_seconds": hash_seconds, "pixel_hash": pixels.hexdigest(),
                      "conditions": cs.manifest.conditions(), "opencv_threads": cv2.getNumThreads(),
                      "opencv": cv2.__version__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.frames, a.imgsz, a.seed, a.clean)
        return
    runs = []
    for _ in range(2):
        cmd = [sys.executable, __file__, "--child", "--frames", str(a.frames), "--imgsz", str(a.imgsz),
               "--seed", str(a.seed), "--clean", str(a.clean)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    r1, r2 = runs
    result = {
        "frames": r1["frames"], "imgsz": a.imgsz, "seed": a.seed, "clean": a.clean,
        "peak_rss_gb": round(max(r1["peak_rss_gb"], r2["peak_rss_gb"]), 3),
        "rss_after_imports_gb": round(r1["rss_after_imports_gb"], 3),
        "frames_per_s": round(min(r1["frames_per_s"], r2["frames_per_s"]), 1),
        "frames_per_s_runs": [round(r["frames_per_s"], 1) for r in runs],
        "content_hash_seconds": round(r1["hash_seconds"], 3),
        "hash_run1": r1["content_hash"], "hash_run2": r2["content_hash"],
        "pixel_hash_run1": r1["pixel_hash"], "pixel_hash_run2": r2["pixel_hash"],
        "hashes_equal": r1["content_hash"] == r2["content_hash"] and r1["pixel_hash"] == r2["pixel_hash"],
        "conditions": r1["conditions"],
        "command": " ".join([".venv/bin/python", "benchmarks/calib_sets_bench.py", *sys.argv[1:]]),
        "cpu_flags": cpu_flags(), "opencv": r1["opencv"], "opencv_threads": r1["opencv_threads"],
        "python": platform.python_version(),
    }
    from benchmarks.provenance import git_commit

    result["git_commit"] = git_commit()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "calib_sets.json").write_text(json.dumps(result, indent=1) + "\n")
    cpu = result["cpu_flags"]
    md = [
        "# calib_sets benchmark: streaming QRID mix of the bundled vtest frames",
        "",
        f"`{result['command']}`",
        "",
        f"{result['frames']} frames at {a.imgsz} px (bundled vtest frames cycled), clean fraction {a.clean}, seed "
        f"{a.seed}; each run in a fresh process, decode + resize + degrade + hash every frame.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| peak RSS (worse run) | {result['peak_rss_gb']} GB (after imports: {result['rss_after_imports_gb']} GB) |",
        f"| throughput (slower run) | {result['frames_per_s']} frames/s (runs: {result['frames_per_s_runs']}) |",
        f"| content hash run 1 | `{result['hash_run1']}` |",
        f"| content hash run 2 | `{result['hash_run2']}` |",
        f"| output pixels identical in both runs | {r1['pixel_hash'] == r2['pixel_hash']} |",
        f"| content hash time (no decode) | {result['content_hash_seconds']} s |",
        f"| conditions | {', '.join(f'{k} {v}' for k, v in result['conditions'].items())} |",
        f"| CPU | {cpu['model']}, {cpu['cores']} cores, flags {', '.join(cpu['flags'])}; OpenCV {result['opencv']} "
        f"with {result['opencv_threads']} threads |",
        "",
    ]
    (a.out / "calib_sets.md").write_text("\n".join(md))
    print(json.dumps({k: result[k] for k in ("frames", "peak_rss_gb", "frames_per_s", "hashes_equal")}))
    if not result["hashes_equal"]:
        raise SystemExit("the two builds differ: calib_sets is not deterministic")


if __name__ == "__main__":
    main()
