"""Human-readable outputs of a run: the summary table the CLI prints and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _skipped_lines(skipped: list[str], what: str = "calibration", key: str = "skipped",
                   show: int = 10) -> list[str]:
    if not skipped:
        return []
    more = [f"  ... and {len(skipped) - show} more (report.json {key!r})"] if len(skipped) > show else []
    return [f"skipped {len(skipped)} unreadable {what} input(s):", *(f"  {x}" for x in skipped[:show]), *more]


def summary_table(r: dict[str, Any]) -> str:
    ev = r.get("evaluation") or {}
    acc, lat, size = ev.get("accuracy", {}), ev.get("latency_ms", {}), ev.get("size_mb", {})
    rows = [("precision", "mAP50-95", "mAP50", "latency ms (p50/p90)", "x FP32", "size MB")]
    fp_lat = lat.get("fp32", {}).get("median_ms")
    for p in ("fp32", "int8"):
        a, t = acc.get(p, {}), lat.get(p, {})
        ratio = t["median_ms"] / fp_lat if t and fp_lat else None
        rows.append((p, _fmt(a.get("map50_95")), _fmt(a.get("map50")),
                     f"{_fmt(t.get('median_ms'), '.1f')} / {_fmt(t.get('p90_ms'), '.1f')}" if t else "n/a",
                     _fmt(ratio, '.2f'), _fmt(size.get(p), '.1f')))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))  # noqa: E731
    out = [line(rows[0]), "  ".join("-" * w for w in widths), *[line(r_) for r_ in rows[1:]]]
    metric = ev.get("metric")
    note = (f"accuracy: {'fidelity vs FP32 detections' if metric == 'fidelity' else metric} on {ev.get('images')} "
            "held-out images" if ev else "accuracy: not evaluated (pass eval= / --eval)")
    kept = r.get("kept_in_float", [])
    rules: dict[str, int] = {}
    for k in kept:
        rules[k["rule"]] = rules.get(k["rule"], 0) + 1
    m = r.get("machine", {})
    out += ["", note,
            f"target {r['target']} | observer {r['calibration']['observer']}{_alpha(r)} | "
            f"{r['calibration']['samples']} "
            f"calibration samples | set {r['calibration']['set_hash'][:12]}",
            _stability_line(r.get("range_stability", {})),
            *_skipped_lines(r.get("skipped") or []),
            *_skipped_lines(ev.get("skipped") or [], "evaluation", "evaluation.skipped"),
            f"kept in float: {len(kept)} node(s) " + ", ".join(f"{v} by {k}" for k, v in rules.items()),
            f"quantize time {r['seconds']['total']:.1f} s | CPU {m.get('cpu_model', '?')} "
            f"flags {' '.join(m.get('flags', []))}"]
    return "\n".join(out)


def _alpha(r: dict[str, Any]) -> str:
    a = r["calibration"].get("blend_alpha")
    return "" if a is None else f" (alpha {a:g})"


def _stability_line(rs: dict[str, Any]) -> str:
    if not rs.get("sizes"):
        return "range stability: n/a (fewer than 4 samples)"
    parts = [f"{f:.0%} at n={s}" for f, s in zip(rs["stable_fraction"], rs["sizes"], strict=True)]
    return f"range stability: tensors whose range moves < {rs['tol']:.0%}: " + ", ".join(parts)


def _blend_lines(b: dict[str, Any] | None) -> list[str]:
    if not b:
        return []
    tried = ", ".join(f"{a}: {v} dB" for a, v in b["output_sqnr_db"].items())
    lines = [f"- blend observer: alpha {b['chosen_alpha']} chosen (0 = MSE ranges, 1 = percentile ranges); "
             f"model-output SQNR on the probe samples per alpha: {tried}"]
    for i, g in enumerate(b.get("groups") or []):
        lines.append(f"  - group {i + 1} ({g['tensors']} tensors, {g['first']} .. {g['last']}): alpha {g['alpha']:g}, "
                     f"output SQNR {g['output_sqnr_db']} dB after choosing it")
    return lines


def report_markdown(r: dict[str, Any]) -> str:
    lines = [f"# qcal report: {r['model']['source']}", "", "```", summary_table(r), "```", "",
             "## Run", "", f"- qcal {r['qcal_version']}, target `{r['target']}`, config hash `{r['config_hash']}`",
             f"- model sha256 `{r['model']['sha256'][:16]}`",
             f"- calibration set hash `{r['calibration']['set_hash']}` ({r['calibration']['samples']} samples, "
             f"observer {r['calibration']['observer']}, {r['calibration']['seconds']} s, observer state "
             f"{r['calibration']['observer_state_mb']} MB)",
             f"- timings (s): {r['seconds']}", *_blend_lines(r['calibration'].get("blend_search")), "",
             *(["## Calibration inputs skipped as unreadable", "",
                *(f"- `{x}`" for x in r["skipped"]), ""] if r.get("skipped") else []),
             *(["## Evaluation inputs skipped as unreadable", "",
                *(f"- `{x}`" for x in r["evaluation"]["skipped"]), ""]
               if (r.get("evaluation") or {}).get("skipped") else []),
             "## Nodes kept in float, and why", "", "| node | op | rule | reason |", "|---|---|---|---|"]
    for k in r.get("kept_in_float", []):
        lines.append(f"| `{k['node']}` | {k['op']} | {k['rule']} | {k['reason']} |")
    rs = r.get("range_stability", {})
    if rs.get("least_stable"):
        sizes = rs["sizes"]
        lines += ["", "## Is the calibration set big enough? (range stability)", "",
                  f"Relative width of the 90% bootstrap interval of each tensor's max |x| at n = {sizes}. Tensors "
                  f"moving less than {rs['tol']:.0%}: " + ", ".join(f"{f:.0%} at n={s}" for f, s in
                                                               zip(rs['stable_fraction'], sizes, strict=True))
                  + ". A spread still shrinking from n/2 to n says: add samples.", "",
                  "| least stable tensor | " + " | ".join(f"n={s}" for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        lines += [f"| `{t['tensor']}` | " + " | ".join(f"{v:.1%}" for v in t["spread"]) + " |"
                  for t in rs["least_stable"]]
    cov = r.get("coverage")
    if cov:
        lines += ["", "## Coverage", "", f"- samples {cov['n']}, sources {cov['sources']}",
                  f"- conditions {cov['conditions']}", f"- classes {cov['classes'] or 'no labels'}"]
    top = r.get("sensitivity_top", [])
    if top:
        lines += ["", "## Per-node sensitivity (SQNR lost by the node's quantized output against its inputs)", "",
                  "| node | SQNR drop dB |", "|---|---|", *[f"| `{t['node']}` | {t['sqnr_drop_db']} |" for t in top]]
    if "attribution" in r:
        lines += attribution_lines(r["attribution"])
    lines += _metaaug_lines(r)
    lines += ["", "## Config", "", "```json", __import__("json").dumps(r["config"], indent=1), "```", ""]
    return "\n".join(lines)


def _metaaug_lines(r: dict[str, Any]) -> list[str]:
    """MetaAug's T: its hash, the outer (validation) loss per block, and the x | T(x) picture when written."""
    meta = next((p["changed"]["metaaug"] for p in r.get("passes", []) if "metaaug" in p.get("changed", {})), None)
    if meta is None:
        return []
    lines = ["", "## MetaAug (learned calibration augmentation)", "",
             f"- T hash `{meta['hash']}`; {meta['spent_s']} s of meta-training"
             f"{' (time budget spent: stopped early)' if meta.get('stopped_early') else ''}; training view "
             f"{meta['train_n']}, validation view {meta['val_n']} calibration samples", "",
             "| block | meta-iterations | outer loss (validation) first -> last | fit first -> last | "
             "RMS of T(x) - x / input std |", "|---|---|---|---|---|"]
    for unit, v in meta.get("per_unit", {}).items():
        lines.append(f"| `{unit}` | {v['meta_iters']:g} | {_fmt(v.get('outer_first'), '.4g')} -> "
                     f"{_fmt(v.get('outer_last'), '.4g')} | {_fmt(v.get('fit_first'), '.4g')} -> "
                     f"{_fmt(v.get('fit_last'), '.4g')} | {_fmt(v.get('change_rms_over_std'), '.3g')} |")
    img = r.get("metaaug_samples")
    if img:
        lines += ["", f"![x | T(x) | |T(x) - x| x {img['diff_gain']:g}]({img['file']})", "",
                  f"{img['samples']} calibration inputs, one per row: x, T(x) (same brightness mapping as x), "
                  f"|T(x) - x| amplified {img['diff_gain']:g}x."]
    return lines


def attribution_lines(att: dict[str, Any] | None, top: int = 10) -> list[str]:
    """The per-tensor error attribution: the tensors whose float version helps most, and those that hurt most alone."""
    if not att or not att.get("tensors"):
        return ["", "## Per-tensor error attribution", "", "Not computed: `qcal quantize --attribution` (or "
                "`keep_float.attribution_samples = 1`) adds, for every quantized tensor, the output SQNR when only it "
                "is quantized and the gain when only it is left float."]
    rows = att["tensors"]
    lines = ["", "## Per-tensor error attribution (simulated, output SQNR against FP32)", "",
             f"On {att['samples']} probe sample(s): `left float` is how much the model's output SQNR rises when only "
             "this tensor stays float; `alone` is the output SQNR when only this tensor is quantized (low: it "
             "alone hurts). Read this first when a model collapses."]
    if att.get("plot"):
        lines += ["", f"![per-tensor attribution]({att['plot']})"]
    lines += ["", "| tensor | kind | left float: gain dB | alone: SQNR dB |", "|---|---|---|---|"]
    worst = sorted(rows, key=lambda t: -t["float_gain_db"])[:top]
    worst += [t for t in sorted(rows, key=lambda t: t["alone_db"])[:top] if t not in worst]
    lines += [f"| `{t['tensor']}` | {t['kind']} | {t['float_gain_db']:+.2f} | {t['alone_db']:.1f} |" for t in worst]
    return lines


def attribution_png(att: dict[str, Any], path: Path) -> None:
    """Two bar charts in graph order: gain when left float, and SQNR when quantized alone (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = att["tensors"]
    colors = ["tab:blue" if t["kind"] == "activation" else "tab:orange" for t in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    a.bar(range(len(rows)), [t["float_gain_db"] for t in rows], color=colors)
    a.set_ylabel("gain left float (dB)")
    b.bar(range(len(rows)), [t["alone_db"] for t in rows], color=colors)
    b.set_ylabel("SQNR quantized alone (dB)")
    b.set_xlabel("quantized tensor (blue: activation, orange: weight), table order")
    fig.suptitle(f"per-tensor error attribution ({att['samples']} probe sample(s))")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
