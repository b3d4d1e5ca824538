"""MetaAug on Fashion-MNIST (issue 9).

Same ResNet-8 checkpoint and loaders as benchmarks/adaquant_fmnist.py. Calibration: 256 train images (seeded by
the run's seed); evaluation: top-1 on the 10,000 test images and on the 256 calibration images. First conv and fc
at 8 bits, every other layer at W2A4 or W3A3 (as the paper). Variants:
  rtn            round-to-nearest
  recon          the paper's baseline: BRECQ block reconstruction (the residual blocks) + AdaRound + QDrop (0.5)
  recon_handaug  the same, reconstructing on the images plus a hand-made augmentation (flip, shifted crop, noise)
  recon_metaaug  the same with MetaAug (T trained per block, reconstruction on the images plus T(images))

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/metaaug_fmnist.py --seeds 0 1 2 --bits w2a4 --out ...
Writes OUT.{json,md}; --merge A.json B.json ... joins per-bit-width runs into one results file. The quantized
models are saved under --save-dir (state dicts, not committed) for the robustness step.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adaquant_fmnist import CKPT, ResNet8, load_fmnist, top1  # noqa: E402

from exporters.quant_table import atomic_write_text  # noqa: E402

VARIANTS = ("rtn", "recon", "recon_handaug", "recon_metaaug")


def hand_aug(seed: int):  # type: ignore[no-untyped-def]
    """x -> cat(x, flip/shift/noise(x)), seeded: the 'standard hand-made augmentation' row."""
    g = torch.Generator().manual_seed(seed)

    def f(x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(x), generator=g) < 0.5
        a = torch.where(flip[:, None, None, None], x.flip(-1), x)
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        a = torch.roll(a, shifts=(dy, dx), dims=(-2, -1))           # a shifted crop (wrap-around border)
        a = a + 0.05 * torch.randn(a.shape, generator=g)
        return torch.cat([x, a])

    return f


def run_one(model: torch.nn.Module, calib: torch.Tensor, bits: str, variant: str, seed: int, args: argparse.Namespace,
            ) -> tuple[torch.nn.Module, dict]:
    from qcal.config import MetaAugConfig
    from qcal.passes.adaquant import AdaQuant
    from qcal.passes.base import PassContext
    from qcal.quant.fakequant import Precision

    low = Precision(bits)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    plan = {n: (Precision.INT8 if n in ("conv1", "fc") else low) for n in names}
    torch.manual_seed(seed)
    ctx = PassContext.build(model, calib, plan, progress=True,
                            augment=hand_aug(seed) if variant == "recon_handaug" else None)
    info: dict = {}
    if variant != "rtn":
        meta = MetaAugConfig(iters=args.meta_iters, seed=seed, batch=32, width=args.width, margin=args.margin,
                             lr=args.meta_lr, beta=args.beta, gamma=args.gamma, max_delta=args.max_delta,
                             time_budget_s=args.meta_budget_s, inner_clip=args.inner_clip) if variant == "recon_metaaug" else None
        r = AdaQuant(recon_config(args, seed, meta)).run(ctx)
        info = {"layers_reverted": r.changed["layers_reverted"],
                "mse_after": {k: round(v["mse_after"], 5) for k, v in r.per_layer.items()}}
        if meta is not None:
            info["metaaug"] = r.changed["metaaug"]
            r.augmenter.save(f"{args.out}.{bits}.s{seed}.T.safetensors")
    return ctx.qmodel.eval(), info


def add_recon_args(ap: argparse.ArgumentParser) -> None:
    """The reconstruction and MetaAug options (shared with metaaug_robustness.py)."""
    ap.add_argument("--iters", type=int, default=200, help="reconstruction iterations per unit (paper: 20000)")
    ap.add_argument("--granularity", default="block", choices=["layer", "block"])
    ap.add_argument("--rounding", default="adaround", choices=["free", "adaround"])
    ap.add_argument("--qdrop", type=float, default=0.5)
    ap.add_argument("--lr-round", type=float, default=1e-2, help="AdaRound V learning rate (reference 1e-3 for "
                    "20k iterations)")
    ap.add_argument("--lr-weight-scale", type=float, default=1e-4)
    ap.add_argument("--lr-act-scale", type=float, default=1e-3)
    ap.add_argument("--meta-iters", type=int, default=20, help="MetaAug meta-iterations per block (paper: 500)")
    ap.add_argument("--margin", type=float, default=0.1, help="MetaAug hinge margin on mean((T(x)-x)^2), in units "
                    "of the calibration images' variance")
    ap.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate of T")
    ap.add_argument("--beta", type=float, default=0.5, help="MetaAug hinge weight (0: no hinge)")
    ap.add_argument("--gamma", type=float, default=1.0, help="MetaAug feature (PKT) weight")
    ap.add_argument("--max-delta", type=float, default=1.0, help="bound |T(x)-x| per pixel, in units of the "
                    "calibration images' std (0: unbounded)")
    ap.add_argument("--inner-clip", type=float, default=0.0, help="bound the MetaAug inner step's gradient norm "
                    "(0: off)")
    ap.add_argument("--width", type=int, default=8, help="T's UNet width (channels of its first level)")
    ap.add_argument("--meta-budget-s", type=float, default=0.0, help="MetaAug time budget per run (0: none)")


def recon_config(args: argparse.Namespace, seed: int, meta: object) -> object:
    from qcal.config import AdaQuantConfig

    return AdaQuantConfig(iters=args.iters, batch=32, seed=seed, augment=meta, granularity=args.granularity,
                          rounding=args.rounding, qdrop=args.qdrop, lr_round=args.lr_round,
                          lr_weight_scale=args.lr_weight_scale, lr_act_scale=args.lr_act_scale)


def mean_sd(v: list[float]) -> str:
    return f"{statistics.mean(v):.4f}" + (f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--bits", nargs="+", default=["w2a4", "w3a3"])
    ap.add_argument("--calib", type=int, default=256)
    add_recon_args(ap)
    ap.add_argument("--save-dir", default="/tmp/metaaug_models", help="quantized state dicts (for robustness)")
    ap.add_argument("--merge", nargs="+", help="join these per-bit-width results files into --out and stop")
    ap.add_argument("--robustness", help="with --merge: metaaug_robustness.json to include under 'robustness'")
    ap.add_argument("--samples", nargs="+", help="saved T files: write OUT_samples.png (x | T(x) | 10|T(x)-x|) "
                    "for 8 calibration images of seed 0 and stop")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metaaug_fmnist"))
    args = ap.parse_args()
    if args.merge:
        res = merge([json.loads(Path(f).read_text()) for f in args.merge])
        if args.robustness:   # metaaug_robustness.py's results: per condition (mean, CI low, CI high)
            rob = json.loads(Path(args.robustness).read_text())
            res["robustness"] = {"file": Path(args.robustness).name, "seed": rob["seed"],
                                 "conditions": rob["conditions"], "top1": rob["top1"], "command": rob["command"]}
        res["command"] += " ; python benchmarks/metaaug_fmnist.py " + shlex.join(sys.argv[1:])
        write_results(Path(args.out), res)
        return
    torch.set_num_threads(1)
    from benchmarks.provenance import provenance

    xtr, ytr, xte, yte = load_fmnist(args.data)
    if args.samples:
        write_samples(Path(f"{args.out}_samples.png"), args.samples,
                      xtr[torch.from_numpy(np.random.default_rng(0).choice(len(xtr), args.calib, replace=False))][:8])
        return
    model = ResNet8()
    model.load_state_dict(torch.load(CKPT, weights_only=True))
    model.eval()
    res: dict = {"partial": len(args.seeds) < 3, "calib_n": args.calib, "seeds": args.seeds, "fp32_top1": top1(model, xte, yte),
                 "top1": {}, "calib_top1": {}, "seconds": {}, "details": {},
                 "command": "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/metaaug_fmnist.py "
                            + shlex.join(sys.argv[1:]),
                 **provenance(), "noisy_machine": True,
                 "settings": {k: v for k, v in vars(args).items() if k not in ("merge", "data")},
                 "notes": f"recon = {args.granularity} reconstruction, {args.rounding} rounding, qdrop {args.qdrop}, "
                          f"{args.iters} iterations per unit; MetaAug {args.meta_iters} meta-iterations per block"}
    for bits in args.bits:
        res["top1"][bits] = {v: [] for v in VARIANTS}
        res["calib_top1"][bits] = {v: [] for v in VARIANTS}
        res["seconds"][bits] = {v: [] for v in VARIANTS}
        for seed in args.seeds:
            idx = torch.from_numpy(np.random.default_rng(seed).choice(len(xtr), args.calib, replace=False))
            calib, calib_y = xtr[idx], ytr[idx]
            for v in args.variants:
                t0 = time.perf_counter()
                q, info = run_one(model, calib, bits, v, seed, args)
                Path(args.save_dir).mkdir(parents=True, exist_ok=True)
                torch.save(q.state_dict(), Path(args.save_dir) / f"{bits}.{v}.s{seed}.pt")
                res["seconds"][bits][v].append(round(time.perf_counter() - t0, 1))
                res["top1"][bits][v].append(top1(q, xte, yte))
                res["calib_top1"][bits][v].append(top1(q, calib, calib_y))
                res["details"][f"{bits}/{v}/s{seed}"] = info
                print(f"{bits} {v} seed {seed}: test {res['top1'][bits][v][-1]} calib "
                      f"{res['calib_top1'][bits][v][-1]} ({res['seconds'][bits][v][-1]} s)", flush=True)
                atomic_write_text(Path(f"{args.out}.json"), json.dumps(res, indent=1))
    write_results(Path(args.out), res)


def write_samples(out: Path, t_files: list[str], x: torch.Tensor) -> None:
    """One row per T file: the 8 images, T of them, and 10x their absolute difference (grey, 0.5 = zero)."""
    import cv2

    from qcal.augment import Augmenter

    rows = []
    for f in t_files:
        tx = Augmenter.load(f)(x)
        tiles = [torch.cat(list(v[:, 0]), 1) for v in (x + 0.5, tx + 0.5, 0.5 + 10 * (tx - x).abs())]
        rows.append(torch.cat(tiles, 0))
    img = (torch.cat(rows, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    img = cv2.resize(img, (img.shape[1] * 3, img.shape[0] * 3), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(out), img)


def merge(parts: list[dict]) -> dict:
    """One results dict from runs that each covered some bit widths (same seeds and settings)."""
    out = dict(parts[0])
    for key in ("top1", "calib_top1", "seconds", "details"):
        out[key] = {k: v for p in parts for k, v in p[key].items()}
    out["command"] = " ; ".join(p["command"] for p in parts)
    return out


def bars(res: dict) -> dict:
    """The issue's bar at each bit width: MetaAug beats recon by more than the larger seed std, and its
    calibration-vs-test gap is smaller."""
    out = {}
    for bits, rows in res["top1"].items():
        r, m = rows.get("recon", []), rows.get("recon_metaaug", [])
        if len(r) < 2 or len(m) != len(r):
            continue
        gap = {v: statistics.mean(c - t for c, t in zip(res["calib_top1"][bits][v], rows[v], strict=True))
               for v in ("recon", "recon_metaaug")}
        sd = max(statistics.stdev(r), statistics.stdev(m))
        diff = statistics.mean(m) - statistics.mean(r)
        out[bits] = {"metaaug_minus_recon": round(diff, 4), "larger_seed_std": round(sd, 4),
                     "beats_by_more_than_std": diff > sd, "gap_recon": round(gap["recon"], 4),
                     "gap_metaaug": round(gap["recon_metaaug"], 4),
                     "gap_shrinks": abs(gap["recon_metaaug"]) < abs(gap["recon"])}
    return out


def write_results(out: Path, res: dict) -> None:
    res["bars"] = bars(res)
    atomic_write_text(Path(f"{out}.json"), json.dumps(res, indent=1))
    write_md(out, res)


def write_md(out: Path, res: dict) -> None:
    lines = ["# MetaAug on Fashion-MNIST (issue 9)" + (" (PARTIAL)" if res.get("partial") else ""), "",
             f"Command: `{res['command']}`", "",
             f"FP32 top-1: {res['fp32_top1']}; calibration: {res['calib_n']} train images; seeds {res['seeds']}; "
             f"{res['notes']}.", "",
             "| bits | variant | test top-1 | calib top-1 | calib - test gap | seconds |", "|---|---|---|---|---|---|"]
    for bits, rows in res["top1"].items():
        for v, vals in rows.items():
            if not vals:
                continue
            cal = res["calib_top1"][bits][v]
            gap = [c - t for c, t in zip(cal, vals, strict=True)]
            lines.append(f"| {bits} | {v} | {mean_sd(vals)} | {mean_sd(cal)} | {mean_sd(gap)} | "
                         f"{mean_sd(res['seconds'][bits][v])} |")
    lines += ["", "Bar (issue 9): MetaAug - recon > larger seed std, and a smaller calibration-vs-test gap:", "",
              "| bits | MetaAug - recon | larger seed std | beats | gap recon | gap MetaAug | gap shrinks |",
              "|---|---|---|---|---|---|---|"]
    for bits, b in res.get("bars", {}).items():
        lines.append(f"| {bits} | {b['metaaug_minus_recon']:+.4f} | {b['larger_seed_std']:.4f} | "
                     f"{b['beats_by_more_than_std']} | {b['gap_recon']:+.4f} | {b['gap_metaaug']:+.4f} | "
                     f"{b['gap_shrinks']} |")
    m = res["machine"]
    lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores (shared, timings noisy)."]
    atomic_write_text(Path(f"{out}.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
