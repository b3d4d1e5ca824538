"""AdaQuant / BN / bias correction / integer-programming bit allocation on Fashion-MNIST (labelled top-1).

A small ResNet (ResNet-8: 3 stages of one basic block, 16/32/64 channels, ~78k params) is trained once on CPU
and cached as benchmarks/fmnist_resnet8.pt (a state dict, loaded with weights_only=True). Calibration: 1,000
train images (seeded random); evaluation: the 10,000 test images. Every layer (first conv and fc included)
is quantized: weights per output channel (symmetric), each conv/linear input per tensor (unsigned after ReLU).

Rows: FP32; W8A8 and W4A4 round-to-nearest; W4A4 AdaQuant (parallel mode, CalibTIP's default; --sequential adds
the sequential mode); W4A4 AdaQuant then BN re-estimation then bias correction (CalibTIP's advanced pipeline
order). Bit allocation as in CalibTIP (parallel-mode AdaQuant layers per precision, per-layer
sensitivity = calibration cross-entropy increase with one layer at a choice and the rest at 8 bits, an
integer program over a size budget D = weight bits / FP32): one curve over W4A4/W6A6/W8A8 (every uniform
precision it is compared with, so at D = a uniform size the IP may pick that uniform model) and the paper's
W4A4/W8A8 curve. Each IP point at a uniform size is compared with that uniform model image by image (bootstrap
CI and McNemar), on the test set and on 5k held-out train images. Optimised models are cached (--cache-dir).

    nice -n 10 .venv/bin/python benchmarks/adaquant_fmnist.py            # writes results/adaquant_fmnist.{json,md}
Data: Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), or --data DIR with the idx .gz files
(`apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb /tmp/fm/root`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exporters.quant_table import atomic_write_text  # noqa: E402

CKPT = ROOT / "benchmarks" / "fmnist_resnet8.pt"
DATA_DIRS = ["/usr/share/datasets/fashion-mnist", "/tmp/fm/root/usr/share/datasets/fashion-mnist"]


def load_fmnist(folder: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = next((Path(c) for c in ([folder] if folder else DATA_DIRS) if c and Path(c).is_dir()), None)
    if d is None:
        raise SystemExit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist (or --data DIR)")

    def images(name: str) -> torch.Tensor:
        raw = np.frombuffer(gzip.decompress((d / name).read_bytes()), np.uint8, offset=16)
        return torch.from_numpy(raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0 - 0.5)

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(gzip.decompress((d / name).read_bytes()), np.uint8, offset=8)
                                .astype(np.int64))

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet8(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def train(xtr: torch.Tensor, ytr: torch.Tensor, epochs: int, subset: int) -> tuple[ResNet8, float]:
    torch.manual_seed(0)
    keep = torch.from_numpy(np.random.default_rng(1).choice(len(xtr), min(subset, len(xtr)), replace=False))
    xtr, ytr = xtr[keep], ytr[keep]
    m = ResNet8()
    steps = epochs * (len(xtr) // 128)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    with tqdm(total=steps, desc="train") as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(len(xtr) // 128):
                idx = perm[i * 128:(i + 1) * 128]
                x = xtr[idx]
                flip = torch.rand(len(x), generator=g) < 0.5   # horizontal flips: the only augmentation
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = nn.functional.cross_entropy(m(x), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}")
    return m.eval(), time.perf_counter() - t0


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(N,) bool: whether the model's top-1 class is the label, image by image (for paired comparisons)."""
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(-1) for i in range(0, len(x), 1000)])
    return (pred == y).numpy()


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return round(float(correct(model, x, y).mean()), 4)


def heldout_indices(n_train: int, train_subset: int, calib_idx: np.ndarray, n: int) -> np.ndarray:
    """Train images the checkpoint never trained on (train() uses a seeded subset) and not in the calibration
    set: a second evaluation set, so IP-vs-uniform is not decided by the 10k test images alone."""
    used = np.zeros(n_train, bool)
    used[np.random.default_rng(1).choice(n_train, min(train_subset, n_train), replace=False)] = True
    used[calib_idx] = True
    free = np.flatnonzero(~used)
    return np.sort(np.random.default_rng(2).choice(free, min(n, len(free)), replace=False))


MAIN_CHOICES = ("w4a4", "w6a6", "int8")    # every uniform precision the IP is compared against
PAPER_CHOICES = ("w4a4", "int8")                    # CalibTIP's ResNet runs: 4/8 bits, base 8
MAIN_BUDGETS = (0.13, 0.15, 0.17, 0.1875, 0.21, 0.23, 0.25)   # includes each uniform size above W4A4 exactly
PAPER_BUDGETS = (0.13, 0.15, 0.17, 0.19, 0.21, 0.23, 0.25)            # the paper's min/max compression 0.13..0.25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--iters", type=int, default=1000, help="AdaQuant iterations per layer (paper: 1000)")
    ap.add_argument("--train-only", action="store_true", help="train and cache the checkpoint, then stop")
    ap.add_argument("--calib", type=int, default=1000)
    ap.add_argument("--heldout", type=int, default=5000, help="unused train images evaluated beside the test set")
    ap.add_argument("--eval-limit", type=int, default=0, help="smoke runs: first N test images only (0: all)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-subset", type=int, default=20000, help="train images used (the machine is shared)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--sequential", action="store_true", help="also a W4A4 row with sequential-mode AdaQuant")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "qcal" / "adaquant_fmnist"),
                    help="AdaQuant-optimised models (state dicts) reused across runs, keyed by checkpoint and config")
    ap.add_argument("--refine", type=int, default=4, help="the IP curve's plan at each budget: the best measured "
                    "(joint calibration CE) of the IP's K best plans and the uniform ones (qcal's default, 4)")
    ap.add_argument("--report-only", action="store_true", help="rebuild bars and .md from the saved .json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adaquant_fmnist"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.report_only:   # recompute the bars and the markdown from the saved measurements
        res = json.loads(Path(args.out).with_suffix(".json").read_text())
        res["bars"] = bars(res)
        write(Path(args.out), res)
        return

    from benchmarks.provenance import provenance
    from qcal.eval.paired import compare_paired
    from qcal.passes import PassContext, run_passes
    from qcal.passes.adaquant import AdaQuantConfig, AdaQuantMode
    from qcal.passes.sensitivity import compose, joint_loss, measure
    from qcal.placement.alloc import Budget, allocate, candidates, refine
    from qcal.quant.fakequant import Precision
    from qcal.quant.qmodules import QuantModel, torch_layer_costs

    xtr, ytr, xte, yte = load_fmnist(args.data)
    if args.eval_limit:
        xte, yte = xte[:args.eval_limit], yte[:args.eval_limit]
    if CKPT.is_file() and not args.retrain:
        model = ResNet8()
        model.load_state_dict(torch.load(CKPT, weights_only=True))
        model.eval()
        train_s = None
    else:
        model, train_s = train(xtr, ytr, args.epochs, args.train_subset)
        tmp = CKPT.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(CKPT)
    if args.train_only:
        print("fp32 top-1", top1(model, xte, yte), "train seconds", train_s)
        return
    calib_idx = np.random.default_rng(0).choice(len(xtr), args.calib, replace=False)
    idx = torch.from_numpy(calib_idx)
    calib, calib_y = xtr[idx], ytr[idx]
    held = torch.from_numpy(heldout_indices(len(xtr), args.train_subset, calib_idx, args.heldout))
    xho, yho = xtr[held], ytr[held]
    ada = AdaQuantConfig(iters=args.iters)
    cache = Path(args.cache_dir)
    ckpt_tag = hashlib.sha256(CKPT.read_bytes()).hexdigest()[:12]
    res: dict = {"top1": {}, "heldout_top1": {}, "seconds": {}, "passes": {}}
    res["top1"]["fp32"] = top1(model, xte, yte)
    print("fp32", res["top1"]["fp32"])

    def ctx_for(p: Precision) -> PassContext:
        return PassContext.build(model, calib, p, progress=True)

    def optimised(key: str, p: Precision, names: list[str], cfg: AdaQuantConfig,
                  start: QuantModel | None = None) -> QuantModel:
        """The model after `names` at precision p (from `start`'s state when given); loaded from the cache when
        this exact run was done before."""
        path = cache / f"{ckpt_tag}_c{args.calib}_{key}_{p.value}_{cfg.mode.value}_i{cfg.iters}_s{cfg.seed}.pt"
        ctx = ctx_for(p)
        if start is not None:
            ctx.qmodel.load_state_dict(start.state_dict())
        if path.is_file():
            ctx.qmodel.load_state_dict(torch.load(path, weights_only=True))
            saved = json.loads(path.with_suffix(".json").read_text())
            res["seconds"][key], res["passes"][key] = saved["seconds"], saved["passes"]
            return ctx.qmodel
        t0 = time.perf_counter()
        reports = run_passes(ctx, names, {"adaquant": cfg})
        res["seconds"][key] = round(time.perf_counter() - t0, 1)
        res["passes"][key] = [r.to_dict() for r in reports]
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(ctx.qmodel.state_dict(), tmp)
        tmp.replace(path)
        atomic_write_text(path.with_suffix(".json"), json.dumps({"seconds": res["seconds"][key],
                                                                 "passes": res["passes"][key]}))
        return ctx.qmodel

    for key, p in (("w8a8_rtn", Precision.INT8), ("w4a4_rtn", Precision.W4A4)):
        res["top1"][key] = top1(ctx_for(p).qmodel, xte, yte)
        print(key, res["top1"][key])
    # Bank of parallel-mode AdaQuant layers per precision (CalibTIP's default mode: layers optimised on FP32
    # inputs are independent, so they can be mixed): the uniform baselines, the IP's choices and the W4A4 rows.
    par = AdaQuantConfig(iters=args.iters, mode=AdaQuantMode.PARALLEL)
    bank = {Precision(c): optimised(f"parallel_{c}", Precision(c), ["adaquant"], par) for c in MAIN_CHOICES}
    res["top1"]["w4a4_adaquant"] = top1(bank[Precision.W4A4], xte, yte)
    # CalibTIP's advanced pipeline: AdaQuant, then BN tuning, then bias tuning.
    bnb = optimised("w4a4_adaquant_bn_bias", Precision.W4A4, ["bn_reestimate", "bias_correction"], par,
                    start=bank[Precision.W4A4])
    res["top1"]["w4a4_adaquant_bn_bias"] = top1(bnb, xte, yte)
    if args.sequential:
        seq = optimised("w4a4_adaquant_sequential", Precision.W4A4, ["adaquant"], ada)
        res["top1"]["w4a4_adaquant_sequential"] = top1(seq, xte, yte)
    print({k: v for k, v in res["top1"].items()})
    evaluated: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}   # plan -> (test, held-out) correctness

    def evaluate(plan: dict[str, Precision]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(sorted((n, p.value) for n, p in plan.items()))
        if key not in evaluated:
            mixed = compose(bank, plan, Precision.INT8)
            evaluated[key] = (correct(mixed, xte, yte), correct(mixed, xho, yho))
        return evaluated[key]

    layer_names = list(bank[Precision.INT8].layers)
    res["uniform"] = []
    for c in MAIN_CHOICES:
        te, ho = evaluate({n: Precision(c) for n in layer_names})
        res["uniform"].append({"precision": c, "size_ratio": Precision(c).weight_bits / 32,
                               "top1": round(float(te.mean()), 4), "heldout_top1": round(float(ho.mean()), 4)})
        print("uniform", res["uniform"][-1])
    t0 = time.perf_counter()
    sens = measure(bank, calib, [Precision(c) for c in MAIN_CHOICES], Precision.INT8, labels=calib_y)
    res["seconds"]["sensitivity"] = round(time.perf_counter() - t0, 1)
    # As CalibTIP's IP (mpip_compression: max(loss - base_loss, 1e-6)): a lower precision never counts as a gain;
    # a negative measured increase is calibration-set noise, and taking it would trade accuracy for nothing.
    ip_sens = {n: {c: 0.0 if c == "int8" else max(v, 1e-6) for c, v in row.items()} for n, row in sens.items()}
    costs = torch_layer_costs(bank[Precision.INT8], calib[:1])
    joint = joint_loss(bank, calib, Precision.INT8, labels=calib_y)   # plan -> measured calibration CE increase
    for curve, choices, budgets, k in (("ip_curve", MAIN_CHOICES, MAIN_BUDGETS, args.refine),
                                       ("ip_curve_unrefined", MAIN_CHOICES, MAIN_BUDGETS, 0),
                                       ("ip_curve_4_8", PAPER_CHOICES, PAPER_BUDGETS, 0)):
        res[curve] = []
        for d in tqdm(budgets, desc=curve):
            opts = [Precision(c) for c in choices]
            plan = (refine(candidates(ip_sens, costs, opts, Budget(size=d), k=k), joint) if k
                    else allocate(ip_sens, costs, opts, Budget(size=d)))
            te, ho = evaluate(plan.choices)
            point = {"size_ratio": d, "achieved_size_ratio": round(plan.cost_ratio, 5),
                     "top1": round(float(te.mean()), 4), "heldout_top1": round(float(ho.mean()), 4),
                     "predicted_ce_increase": round(plan.predicted_loss_increase, 5),
                     "bits": {c: [n for n, p in plan.choices.items() if p.value == c] for c in choices}}
            if k:
                point["candidate"] = plan.measured["candidate"]
                point["refinement"] = [{key: (round(v, 5) if isinstance(v, float) else v) for key, v in row.items()
                                        if key != "choices"} for row in plan.measured["refinement"]]
            for u in res["uniform"]:   # paired comparison vs the uniform model of equal size
                if curve != "ip_curve_4_8" and abs(u["size_ratio"] - d) < 1e-9 and d > 0.125:
                    ute, uho = evaluate({n: Precision(u["precision"]) for n in layer_names})
                    point["vs_uniform"] = {"uniform": u["precision"], "test": compare_paired(te, ute).to_dict(),
                                           "heldout": compare_paired(ho, uho).to_dict()}
            res[curve].append(point)
            print(curve, {k: v for k, v in point.items() if k not in ("bits", "refinement")})
    res["sensitivity"] = sens
    res["layers"] = {n: {"params": c.params, "macs": c.macs} for n, c in costs.items()}
    res["config"] = {"adaquant": {k: (v.value if hasattr(v, "value") else v) for k, v in par.__dict__.items()},
                     "calib_images": args.calib, "eval_images": len(xte), "heldout_images": len(xho),
                     "train_epochs": args.epochs, "train_subset": args.train_subset,
                     "train_seconds": train_s, "checkpoint": CKPT.name, "checkpoint_sha256_12": ckpt_tag,
                     "ip_refine": args.refine,
                     "refinement": "each ip_curve point: of the integer program's ip_refine best plans and the uniform "
                                   "plans within the budget, the one with the lowest cross-entropy increase measured "
                                   "jointly on the calibration images (qcal.allocate_bits' default); "
                                   "ip_curve_unrefined: the IP's optimum as is",
                     "ip_choices": list(MAIN_CHOICES), "ip_choices_paper": list(PAPER_CHOICES), "ip_base": "int8",
                     "sensitivity": f"cross-entropy increase on the {args.calib} labelled calibration images with one layer "
                                    "at the choice and every other layer at int8 (CalibTIP --per-layer, loss), "
                                    "clipped below at 1e-6 for the IP as CalibTIP does",
                     "quantized": "every conv/linear incl. first and last; weights per-channel symmetric; "
                                  "inputs per-tensor (unsigned after ReLU), MSE-searched step size"}
    res["command"] = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}",
                                                                    *sys.argv[1:]])
    res.update(provenance())
    res["threads"] = 1
    res["noisy_machine"] = True
    res["bars"] = bars(res)
    write(Path(args.out), res)


def bars(res: dict) -> dict:
    """The issue's bars, computed from the measured numbers. The IP-vs-uniform bar compares the IP's own plan at a
    budget equal to each uniform model's size (above all-W4A4, where the only feasible plan IS uniform W4A4)."""
    t = res["top1"]
    drop_rtn = t["fp32"] - t["w4a4_rtn"]
    dominated = []
    for c in res["ip_curve"]:
        if "vs_uniform" not in c:
            continue
        v = c["vs_uniform"]
        dominated.append({"uniform": v["uniform"], "size_ratio": c["size_ratio"],
                          "ip_top1": c["top1"], "uniform_top1": v["test"]["top1_b"],
                          "ip_at_least_as_good": c["top1"] >= v["test"]["top1_b"] - 1e-12,
                          "test_diff_ci95": [v["test"]["ci_low"], v["test"]["ci_high"]],
                          "test_mcnemar_p": v["test"]["mcnemar_p"], "test_verdict": v["test"]["verdict"],
                          "heldout_diff": v["heldout"]["diff"], "heldout_verdict": v["heldout"]["verdict"]})
    pareto = []   # the previous run's reading: some IP point no larger than the uniform model is at least as good
    for u in res["uniform"]:
        if u["size_ratio"] <= 0.125:
            continue
        ip = [(c["top1"], c["achieved_size_ratio"]) for c in res["ip_curve"]
              if c["achieved_size_ratio"] <= u["size_ratio"] + 1e-9]
        best = max(ip) if ip else None
        pareto.append({"uniform": u["precision"], "size_ratio": u["size_ratio"], "uniform_top1": u["top1"],
                       "best_ip_top1_at_or_below_size": best and best[0], "at_size": best and best[1],
                       "ip_at_least_as_good": best is not None and best[0] >= u["top1"]})
    return {"adaquant_recovers_half_of_rtn_drop": t["fp32"] - t["w4a4_adaquant"] <= 0.5 * drop_rtn,
            "ip_pareto": pareto, "ip_pareto_dominates_uniform": all(d["ip_at_least_as_good"] for d in pareto),
            "recovered_fraction": round((t["w4a4_adaquant"] - t["w4a4_rtn"]) / max(drop_rtn, 1e-9), 3),
            "ip_vs_uniform": dominated,
            "ip_dominates_uniform": all(d["ip_at_least_as_good"] for d in dominated),
            "ip_significantly_worse_anywhere": any(d["test_verdict"] == "b better" for d in dominated)}


def write(out: Path, res: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=1))
    md = markdown(res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)


def markdown(r: dict) -> str:
    t, c = r["top1"], r["config"]
    lines = ["# AdaQuant / BN / bias correction / IP bit allocation on Fashion-MNIST (ResNet-8)", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']['cpu_model']}, flags "
             f"{','.join(r['machine']['flags'])}, 1 thread, shared with other jobs (`noisy_machine`: seconds are "
             f"indicative). AdaQuant iterations per layer: {c['adaquant']['iters']} (paper: 1000), batch "
             f"{c['adaquant']['batch']}. Checkpoint `benchmarks/{c['checkpoint']}`: {c['train_epochs']} epochs on "
             f"{c.get('train_subset', 60000)} train images. Calibration: {c['calib_images']} train images; every "
             f"conv/linear quantized, first and last included. Evaluation: the {c['eval_images']} test images, and "
             f"{c.get('heldout_images', 0)} held-out train images (neither trained on nor calibrated on).", "",
             "| model | top-1 (10k test) | drop vs FP32 |", "|---|---|---|"]
    for k, v in t.items():
        lines.append(f"| {k} | {v:.4f} | {t['fp32'] - v:+.4f} |")
    b = r["bars"]
    lines += ["", f"AdaQuant W4A4 recovers {b['recovered_fraction']:.0%} of the round-to-nearest W4A4 drop "
              f"(bar: at least half: {'met' if b['adaquant_recovers_half_of_rtn_drop'] else 'NOT met'}).", "",
              "## IP vs uniform at equal size (the bar)", "",
              f"IP choices {c.get('ip_choices')}, base {c.get('ip_base', 'int8')}; sensitivity: "
              f"{c.get('sensitivity', 'calibration cross-entropy')}. Each row pairs the IP's plan at budget D with the "
              "uniform model of exactly that size, image by image: diff = IP - uniform, 95 % bootstrap interval "
              "over images, McNemar exact p on the images where exactly one is right.", "",
              "| D | uniform | IP top-1 | uniform top-1 | diff (test) | 95 % CI | McNemar p | verdict | "
              "diff (held-out) | verdict (held-out) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in b["ip_vs_uniform"]:
        lo, hi = d["test_diff_ci95"]
        lines.append(f"| {d['size_ratio']:.4g} | {d['uniform']} | {d['ip_top1']:.4f} | {d['uniform_top1']:.4f} | "
                     f"{d['ip_top1'] - d['uniform_top1']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {d['test_mcnemar_p']:.3f} | "
                     f"{d['test_verdict']} | {d['heldout_diff']:+.4f} | {d['heldout_verdict']} |")
    lines += ["", f"IP at least as accurate as every uniform model of equal size (test top-1): "
              f"{'yes' if b['ip_dominates_uniform'] else 'NO'}; significantly worse anywhere (95 % CI below 0): "
              f"{'YES' if b['ip_significantly_worse_anywhere'] else 'no'}.", ""]
    if "ip_pareto" in b:
        lines += ["Pareto reading (as the previous run's bar: the best IP point at or below each uniform size; a maximum "
                  "over several test-set scores, so it favours the IP): " + "; ".join(
                      f"{d['uniform']} {d['uniform_top1']:.4f} vs IP {d['best_ip_top1_at_or_below_size']:.4f} at "
                      f"{d['at_size']:.4f}" for d in b["ip_pareto"]) +
                  f" -> {'met' if b['ip_pareto_dominates_uniform'] else 'NOT met'}.", ""]
    refined = [p for p in r["ip_curve"] if "refinement" in p]
    if refined:
        lines += ["## Refinement: the IP's best plans and the uniform ones, measured jointly on the calibration set",
                  "", c.get("refinement", ""), "", "| D | kept | candidates: predicted -> measured CE increase |",
                  "|---|---|---|"]
        for p in refined:
            lines.append(f"| {p['size_ratio']:.4g} | {p['candidate']} | " + "; ".join(
                f"{row['candidate']} {row['predicted_loss_increase']:.4f} -> {row['measured_loss_increase']:.4f}"
                for row in p["refinement"]) + " |")
        lines.append("")
    for curve, title in (("ip_curve", "IP over " + "/".join(c.get("ip_choices", [])) + ", refined (the bar)"),
                         ("ip_curve_unrefined", "IP over " + "/".join(c.get("ip_choices", [])) + ", unrefined"),
                         ("ip_curve_4_8", "IP over W4A4/W8A8 (the paper's choice set)")):
        if curve not in r:
            continue
        lines += [f"## {title} and uniform (parallel AdaQuant layers), size = weight bits / FP32", "",
                  "| kind | size ratio | top-1 (test) | top-1 (held-out) | layers per choice |", "|---|---|---|---|---|"]
        rows = [("uniform " + u["precision"], u["size_ratio"], u["top1"], u.get("heldout_top1"), "")
                for u in r["uniform"]]
        rows += [("IP D=" + str(p["size_ratio"]), p["achieved_size_ratio"], p["top1"], p.get("heldout_top1"),
                  " ".join(f"{k}:{len(v)}" for k, v in p.get("bits", {}).items() if v)) for p in r[curve]]
        for name, s, a, h, n in sorted(rows, key=lambda x: x[1]):
            lines.append(f"| {name} | {s:.4f} | {a:.4f} | {'' if h is None else f'{h:.4f}'} | {n} |")
        lines.append("")
    lines += ["Seconds: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
