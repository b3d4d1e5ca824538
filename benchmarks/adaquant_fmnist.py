"""AdaQuant / BN / bias correction / integer-programming bit allocation on Fashion-MNIST (labelled top-1).

A small ResNet (ResNet-8: 3 stages of one basic block, 16/32/64 channels, ~78k params) is trained once on CPU
and cached as benchmarks/fmnist_resnet8.pt (a state dict, loaded with weights_only=True). Calibration: 1,000
train images (seeded random); evaluation: the 10,000 test images. Every layer (first conv and fc included)
is quantized: weights per output channel (symmetric), each conv/linear input per tensor (unsigned after ReLU).

Rows: FP32; W8A8 and W4A4 round-to-nearest; W4A4 AdaQuant (sequential); W4A4 BN re-estimation + AdaQuant +
bias correction; IP mixed W4A4/W8A8 at size budgets D (fraction of FP32 weight bits) from a bank of
parallel-mode AdaQuant layers; uniform W4A4/W6A6/W8A8 with the same parallel AdaQuant.

    nice -n 10 .venv/bin/python benchmarks/adaquant_fmnist.py            # writes results/adaquant_fmnist.{json,md}
Data: Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), or --data DIR with the idx .gz files
(`apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb /tmp/fm/root`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

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
    from tqdm import tqdm

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


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(-1) for i in range(0, len(x), 1000)])
    return round(float((pred == y).float().mean()), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--iters", type=int, default=1000, help="AdaQuant iterations per layer (paper: 1000)")
    ap.add_argument("--train-only", action="store_true", help="train and cache the checkpoint, then stop")
    ap.add_argument("--calib", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-subset", type=int, default=20000, help="train images used (the machine is shared)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rebuild bars and .md from the saved .json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adaquant_fmnist"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.report_only:   # recompute the bars and the markdown from the saved measurements
        res = json.loads(Path(args.out).with_suffix(".json").read_text())
        res["bars"] = bars(res)
        write(Path(args.out), res)
        return

    from qcal.alloc import Budget, allocate
    from qcal.machine import machine_info
    from qcal.passes import PassContext, run_passes
    from qcal.passes.adaquant import AdaQuantConfig, AdaQuantMode
    from qcal.passes.sensitivity import compose, measure
    from qcal.quant.fakequant import Precision
    from qcal.quant.qmodules import torch_layer_costs

    xtr, ytr, xte, yte = load_fmnist(args.data)
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
    idx = torch.from_numpy(np.random.default_rng(0).choice(len(xtr), args.calib, replace=False))
    calib, calib_y = xtr[idx], ytr[idx]
    ada = AdaQuantConfig(iters=args.iters)
    res: dict = {"top1": {}, "seconds": {}, "passes": {}}
    res["top1"]["fp32"] = top1(model, xte, yte)
    print("fp32", res["top1"]["fp32"])

    def ctx_for(p: Precision) -> PassContext:
        return PassContext.build(model, calib, p, progress=True)

    for key, p in (("w8a8_rtn", Precision.INT8), ("w4a4_rtn", Precision.W4A4)):
        res["top1"][key] = top1(ctx_for(p).qmodel, xte, yte)
        print(key, res["top1"][key])
    for key, names in (("w4a4_adaquant", ["adaquant"]),
                       ("w4a4_adaquant_bn_bias", ["bn_reestimate", "adaquant", "bias_correction"])):
        ctx = ctx_for(Precision.W4A4)
        t0 = time.perf_counter()
        reports = run_passes(ctx, names, {"adaquant": ada})
        res["seconds"][key] = round(time.perf_counter() - t0, 1)
        res["passes"][key] = [r.to_dict() for r in reports]
        res["top1"][key] = top1(ctx.qmodel, xte, yte)
        print(key, res["top1"][key], f"{res['seconds'][key]} s")

    # Bank of parallel-mode AdaQuant layers per precision: uniform baselines and the IP's choices.
    par = AdaQuantConfig(iters=args.iters, mode=AdaQuantMode.PARALLEL)
    bank = {}
    res["uniform"] = []
    for p in (Precision.W4A4, Precision.W6A6, Precision.INT8):
        ctx = ctx_for(p)
        t0 = time.perf_counter()
        run_passes(ctx, ["adaquant"], {"adaquant": par})
        res["seconds"][f"parallel_{p.value}"] = round(time.perf_counter() - t0, 1)
        bank[p] = ctx.qmodel
        res["uniform"].append({"precision": p.value, "size_ratio": p.weight_bits / 32,
                               "top1": top1(ctx.qmodel, xte, yte)})
        print("uniform", res["uniform"][-1])
    choices = [Precision.W4A4, Precision.INT8]
    t0 = time.perf_counter()
    sens = measure(bank, calib, choices, Precision.INT8, labels=calib_y)
    res["seconds"]["sensitivity"] = round(time.perf_counter() - t0, 1)
    costs = torch_layer_costs(bank[Precision.INT8], calib[:1])
    res["ip_curve"] = []
    for d in (0.13, 0.15, 0.17, 0.19, 0.21, 0.23, 0.25):
        plan = allocate(sens, costs, choices, Budget(size=d))
        mixed = compose(bank, plan.choices, Precision.INT8)
        res["ip_curve"].append({"size_ratio": d, "achieved_size_ratio": round(plan.cost_ratio, 4),
                                "top1": top1(mixed, xte, yte),
                                "predicted_ce_increase": round(plan.predicted_loss_increase, 4),
                                "layers_at_4bit": [n for n, p in plan.choices.items() if p is Precision.W4A4]})
        print("ip", res["ip_curve"][-1])
    res["sensitivity"] = sens
    res["layers"] = {n: {"params": c.params, "macs": c.macs} for n, c in costs.items()}
    res["config"] = {"adaquant": {k: (v.value if hasattr(v, "value") else v) for k, v in ada.__dict__.items()},
                     "calib_images": args.calib, "eval_images": len(xte), "train_epochs": args.epochs, "train_subset": args.train_subset,
                     "train_seconds": train_s, "checkpoint": CKPT.name,
                     "quantized": "every conv/linear incl. first and last; weights per-channel symmetric; "
                                  "inputs per-tensor (unsigned after ReLU), MSE-searched step size"}
    res["command"] = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}",
                                                                    *sys.argv[1:]])
    res["machine"] = machine_info().to_dict()
    res["threads"] = 1
    res["bars"] = bars(res)
    write(Path(args.out), res)


def bars(res: dict) -> dict:
    """The issue's bars, computed from the measured numbers."""
    t = res["top1"]
    drop_rtn = t["fp32"] - t["w4a4_rtn"]
    dominated = []
    for u in res["uniform"]:   # the best IP point no larger than the uniform model must be at least as accurate
        ip = [c["top1"] for c in res["ip_curve"] if c["achieved_size_ratio"] <= u["size_ratio"] + 1e-9]
        dominated.append({"uniform": u["precision"], "size_ratio": u["size_ratio"], "uniform_top1": u["top1"],
                          "best_ip_top1_at_or_below_size": max(ip) if ip else None,
                          "ip_at_least_as_good": bool(ip) and max(ip) >= u["top1"]})
    return {"adaquant_recovers_half_of_rtn_drop": t["fp32"] - t["w4a4_adaquant"] <= 0.5 * drop_rtn,
            "recovered_fraction": round((t["w4a4_adaquant"] - t["w4a4_rtn"]) / max(drop_rtn, 1e-9), 3),
            "ip_vs_uniform": dominated,
            "ip_dominates_uniform": all(d["ip_at_least_as_good"] for d in dominated if d["size_ratio"] > 0.125)}


def write(out: Path, res: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=1))
    md = markdown(res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)


def markdown(r: dict) -> str:
    t = r["top1"]
    lines = ["# AdaQuant / BN / bias correction / IP bit allocation on Fashion-MNIST (ResNet-8)", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']['cpu_model']}, flags "
             f"{','.join(r['machine']['flags'])}, 1 thread, shared with other jobs. AdaQuant iterations per layer: "
             f"{r['config']['adaquant']['iters']} (paper: 1000; reduced so the run fits on the shared 2-core machine), "
             f"batch {r['config']['adaquant']['batch']}. Checkpoint `benchmarks/{r['config']['checkpoint']}`: "
             f"{r['config']['train_epochs']} epochs on {r['config'].get('train_subset', 60000)} train images. "
             f"Calibration: {r['config']['calib_images']} train images; every conv/linear quantized, first and last "
             "included.", "", "| model | top-1 (10k test) | drop vs FP32 |", "|---|---|---|"]
    for k, v in t.items():
        lines.append(f"| {k} | {v:.4f} | {t['fp32'] - v:+.4f} |")
    b = r["bars"]
    lines += ["", f"AdaQuant W4A4 recovers {b['recovered_fraction']:.0%} of the round-to-nearest W4A4 drop "
              f"(bar: at least half: {'met' if b['adaquant_recovers_half_of_rtn_drop'] else 'NOT met'}). "
              f"IP curve at or above every uniform point of equal or larger size (above 0.125): "
              f"{'yes' if b['ip_dominates_uniform'] else 'NO'}.",
              "", "## IP mixed W4A4/W8A8 vs uniform (parallel AdaQuant layers), size = weight bits / FP32", "",
              "| kind | size ratio | top-1 | 4-bit layers |", "|---|---|---|---|"]
    rows = [("uniform " + u["precision"], u["size_ratio"], u["top1"], "") for u in r["uniform"]]
    rows += [("IP D=" + str(c["size_ratio"]), c["achieved_size_ratio"], c["top1"], len(c["layers_at_4bit"]))
             for c in r["ip_curve"]]
    for name, s, a, n in sorted(rows, key=lambda x: x[1]):
        lines.append(f"| {name} | {s:.4f} | {a:.4f} | {n} |")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
