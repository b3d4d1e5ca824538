"""Text views of a robustness report: the table `qcal bench` prints and report.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _f(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def grid(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])])


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in body)])


def primary(data: dict[str, Any]) -> tuple[str, str]:
    """(cell key, label) of the report's headline metric: mAP50-95 for detectors, top-1 for classifiers."""
    key = data.get("primary_metric", "map50_95")
    return key, "top-1" if key == "top1" else "mAP50-95"


def matrix_rows(data: dict[str, Any], key: str | None = None, spec: str = ".3f") -> list[list[str]]:
    key = key or primary(data)[0]
    conds = [c["name"] for c in data["conditions"]]
    rows = [["precision", *conds]]
    for name, by_cond in data["cells"].items():
        rows.append([name, *(_f(by_cond.get(c, {}).get(key), spec) for c in conds)])
    return rows


def speed_rows(data: dict[str, Any]) -> list[list[str]]:
    lat, size = data.get("latency_ms", {}), data.get("size_mb", {})
    fp = lat.get("fp32", {}).get("median_ms")
    rows = [["precision", "latency ms p50", "p90", "x FP32", "size MB"]]
    for name in data["cells"]:
        t = lat.get(name, {})
        ratio = t["median_ms"] / fp if t and fp else None
        rows.append([name, _f(t.get("median_ms"), ".1f"), _f(t.get("p90_ms"), ".1f"), _f(ratio, ".2f"),
                     _f(size.get(name), ".1f")])
    return rows


def comparison_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = [["condition", "a - b", f"{primary(data)[1]} diff", "95% CI", "real gain?"]]
    for c in data.get("comparisons", []):
        verdict = ("yes" if c["lo"] > 0 else "worse" if c["hi"] < 0 else "no (CI spans 0)")
        rows.append([c["condition"], f"{c['a']} - {c['b']}", f"{c['diff']:+.4f}",
                     f"[{c['lo']:+.4f}, {c['hi']:+.4f}]", verdict])
    return rows


def summary_table(data: dict[str, Any]) -> str:
    what = "predictions" if primary(data)[0] == "top1" else "detections"
    metric = f"fidelity vs FP32 {what} on clean images" if data["metric"] == "fidelity" else "labels"
    m = data.get("machine", {})
    parts = [f"{primary(data)[1]} per condition ({metric}, {data['eval']['images']} images)", grid(matrix_rows(data)), "",
             grid(speed_rows(data))]
    if data.get("comparisons"):
        parts += ["", "degradation-aware vs clean calibration (bootstrap over images)", grid(comparison_rows(data))]
    parts += ["", f"CPU {m.get('cpu_model', '?')} | threads {m.get('threads', '?')} | flags "
              f"{' '.join(m.get('flags', []))}"]
    return "\n".join(parts)


def report_markdown(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    if primary(data)[0] == "top1":
        metric = ("fidelity: top-1 agreement with the FP32 model's prediction on the clean image"
                  if data["metric"] == "fidelity" else "top-1 against the evaluation set's class labels")
    else:
        metric = ("fidelity: mAP against the FP32 model's confident detections (score >= 0.25) on the clean image"
                  if data["metric"] == "fidelity" else "mAP against the evaluation set's labels")
    out = [
        "# qcal robustness report", "",
        f"- model: `{data['model']['source']}` (sha256 {data['model']['sha256'][:16]})",
        f"- qcal {data['qcal_version']}, config hash {data['config_hash'][:16]}",
        f"- evaluation: `{data['eval']['spec']}`, {data['eval']['images']} images, set hash "
        f"{data['eval']['set_hash'][:16]}; {metric}",
        f"- machine: {m.get('cpu_model', '?')}, threads {m.get('threads', '?')}, flags {' '.join(m.get('flags', []))}",
    ]
    if data.get("command"):
        out.append(f"- command: `{data['command']}`")
    out += _classifier_sections(data) if primary(data)[0] == "top1" else _detector_sections(data)
    if data.get("comparisons"):
        out += ["", "## Degradation-aware vs clean calibration", "",
                f"Difference of {primary(data)[1]} with a 95% percentile-bootstrap interval over evaluation images "
                "(the same resampled images for both). A gain is real only where the interval excludes 0.", "",
                _markdown(comparison_rows(data))]
    out += ["", "## Conditions", ""]
    for c in data["conditions"]:
        steps = ", ".join(f"{s['kind']}(" + ", ".join(f"{k}={v}" for k, v in s.items() if k != "kind") + ")"
                          for s in c["steps"]) or "none"
        out.append(f"- `{c['name']}`: {steps}")
    out += ["", "## Artifacts", ""]
    for p in data["precisions"]:
        extra = f", calibration set {p['calib_hash'][:12]}" if p.get("calib_hash") else ""
        out.append(f"- `{p['name']}`: {p['file']} (sha256 {p['sha256'][:12]}{extra})")
    return "\n".join(out) + "\n"


def _classifier_sections(data: dict[str, Any]) -> list[str]:
    return ["", "## Top-1", "", _markdown(matrix_rows(data)), "",
            "## Agreement with FP32 on the same condition", "",
            "Top-1 agreement with FP32's prediction on the same degraded image: what quantization adds to the "
            "degradation's loss.", "", _markdown(matrix_rows(data, "agreement_top1")), "",
            *_common_sections(data, "top-1 ECE, 15 bins")]


def _detector_sections(data: dict[str, Any]) -> list[str]:
    return ["", "## mAP50-95", "", _markdown(matrix_rows(data)), "",
            "## mAP50", "", _markdown(matrix_rows(data, "map50")), "",
            "## Agreement with FP32 on the same condition", "",
            "mAP50-95 against FP32's own detections on the same degraded image: what quantization adds to the "
            "degradation's loss.", "", _markdown(matrix_rows(data, "agreement_map50_95")), "",
            *_common_sections(data, "detection ECE")]


def _common_sections(data: dict[str, Any], ece: str) -> list[str]:
    return ["## Relative drop vs FP32 on the same condition", "", _markdown(matrix_rows(data, "rel_drop_vs_fp32", "+.3f")),
            "", "## Relative drop vs the same precision on clean", "",
            _markdown(matrix_rows(data, "rel_drop_vs_clean", "+.3f")), "",
            f"## Confidence calibration ({ece}; gap > 0 = over-confident)", "",
            _markdown(matrix_rows(data, "ece")), "", _markdown(matrix_rows(data, "conf_gap", "+.3f")), "",
            "## Latency and size (ONNX Runtime CPU, interleaved in one run)", "", _markdown(speed_rows(data))]
