"""report.html: one self-contained file (plots as inline PNG, no network), for a person to look at.

Plots: mAP50-95 per condition per precision; relative drop vs FP32 as a heat map; latency vs accuracy.
A small inline script marks the page (`data-plots-loaded`, `data-errors` on <body>) so a headless browser test
can check that every plot decoded and no script error happened.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from qcal.bench.tables import comparison_rows, matrix_rows, primary, speed_rows

_CHECK_JS = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-plots-loaded', String(ok));
  document.body.setAttribute('data-plots-total', String(imgs.length));
  document.body.setAttribute('data-errors', String(window.__errors.length));
});
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img.plot { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _value(data: dict[str, Any], prec: str, cond: str, key: str) -> float:
    v = data["cells"].get(prec, {}).get(cond, {}).get(key)
    return float("nan") if v is None else float(v)


def plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    """[(title, base64 PNG)] for the three plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c["name"] for c in data["conditions"]]
    precs = list(data["cells"])
    key, label = primary(data)
    out = []
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(conds) + 2), 3.8))
    width = 0.8 / max(len(precs), 1)
    x = np.arange(len(conds))
    for i, p in enumerate(precs):
        ax.bar(x + i * width - 0.4 + width / 2, [_value(data, p, c, key) for c in conds], width, label=p)
    ax.set_xticks(x, conds, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8, ncol=min(len(precs), 5), loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    out.append((f"{label} per condition and precision", _png(fig)))

    drops = np.array([[_value(data, p, c, "rel_drop_vs_fp32") for c in conds] for p in precs])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(conds) + 2), 0.5 * len(precs) + 1.5))
    lim = max(0.05, float(np.nanmax(np.abs(drops))) if np.isfinite(drops).any() else 0.05)
    im = ax.imshow(drops, cmap="RdYlGn_r", vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), v in np.ndenumerate(drops):
        ax.text(j, i, "n/a" if not np.isfinite(v) else f"{100 * v:+.1f}%", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right")
    ax.set_yticks(range(len(precs)), precs)
    fig.colorbar(im, ax=ax, label=f"relative {label} drop vs FP32")
    out.append(("Relative drop vs FP32 on the same condition", _png(fig)))

    lat = data.get("latency_ms", {})
    if lat:
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        for p in precs:
            if p not in lat:
                continue
            clean = _value(data, p, "clean", key)
            worst = np.nanmin([_value(data, p, c, key) for c in conds])
            ax.errorbar(lat[p]["median_ms"], clean, yerr=[[clean - worst], [0]], fmt="o", capsize=4, label=p)
        ax.set_xlabel("latency ms (median, ONNX Runtime CPU)")
        ax.set_ylabel(f"{label} (clean; bar down to worst condition)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("Latency vs accuracy", _png(fig)))
    return out


def _table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    e = html.escape
    parts = [f"<h1>qcal robustness report</h1><p>model <code>{e(data['model']['source'])}</code> &middot; qcal "
             f"{e(data['qcal_version'])} &middot; {data['eval']['images']} evaluation images ({e(data['metric'])}) "
             f"&middot; CPU {e(str(m.get('cpu_model', '?')))}, flags {e(' '.join(m.get('flags', [])))}</p>"]
    for title, b64 in plots(data):
        parts.append(f"<h2>{e(title)}</h2><img class='plot' alt='{e(title)}' src='data:image/png;base64,{b64}'>")
    key, label = primary(data)
    second = ["<h2>Top-1 agreement with FP32</h2>", _table(matrix_rows(data, "agreement_top1"))] if key == "top1" \
        else ["<h2>mAP50</h2>", _table(matrix_rows(data, "map50"))]
    parts += [f"<h2>{label}</h2>", _table(matrix_rows(data)), *second,
              "<h2>Relative drop vs FP32</h2>", _table(matrix_rows(data, "rel_drop_vs_fp32", "+.3f")),
              f"<h2>{'Top-1' if key == 'top1' else 'Detection'} ECE</h2>", _table(matrix_rows(data, "ece")),
              "<h2>Latency and size</h2>", _table(speed_rows(data))]
    if data.get("comparisons"):
        parts += ["<h2>Degradation-aware vs clean calibration (95% bootstrap CI)</h2>",
                  _table(comparison_rows(data))]
    if data.get("command"):
        parts.append(f"<p>command: <code>{e(data['command'])}</code></p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>qcal robustness report</title>"
            f"<style>{_CSS}</style><script>{_CHECK_JS}</script></head><body>{''.join(parts)}</body></html>\n")
