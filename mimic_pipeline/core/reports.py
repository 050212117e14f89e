"""The pipeline's plots, each a PNG written atomically.

Per study from `eval_metrics` rows: accuracy against the study's variable, one line per answerer
(counting over spread, distractors (concentrated vs balanced needles), concepts and image count;
the other tasks over their studies), with 95% intervals as bands; accuracy against the
sequence-length variant (pooling factor, pixel control); attention by layer; the training loss.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from .files import atomic_path

DEFAULT_VARIANTS = ("pool1", "default")  # models' plain variant, the baselines' only one


def _pyplot():
    """matplotlib's pyplot on the file-only backend (assets run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_markdown(path: str | Path, alt: str) -> str:
    """A PNG as an inline Markdown image (a data URI: the Dagster UI does not render a bare path)."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"


def _save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG atomically and release it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return Path(path)


def _order(values: list[str], axis: str) -> list[str]:
    if axis == "spread":  # most concentrated first: 4-0-0-0 ... 1-1-1-1
        return sorted(values, reverse=True)
    return sorted(values, key=lambda v: (float(v) if re.fullmatch(r"\d+(\.\d+)?", v) else float("inf"), v))


def _lines(rows: list[dict], task: str, axis: str) -> dict[str, dict[str, dict]]:
    """{line label: {axis value: row}} for one study; distractor placements become separate lines."""
    lines: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r["task"] != task or r["axis"] != axis or r["axis_value"] == "all" or r["metric"] != "accuracy":
            continue
        if r["variant"] not in DEFAULT_VARIANTS:
            continue
        label, value = r["checkpoint"], r["axis_value"]
        if "/" in value:  # counting/distractors: "concentrated/2"
            placement, value = value.split("/", 1)
            label = f"{label} ({placement})"
        lines[label][value] = r
    return lines


def study_plot(rows: list[dict], task: str, axis: str, path: str | Path) -> Path | None:
    """Accuracy (%) against the study's values; None when no answerer has results for it."""
    lines = _lines(rows, task, axis)
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    values = _order(sorted({v for line in lines.values() for v in line}), axis)
    x = {v: i for i, v in enumerate(values)}
    for label, points in sorted(lines.items()):
        vs = [v for v in values if v in points]
        y = [100 * points[v]["value"] for v in vs]
        style = "--" if "(balanced)" in label else "-"
        (line,) = ax.plot([x[v] for v in vs], y, style, marker="o", label=label)
        low = [100 * (points[v]["ci_low"] if points[v]["ci_low"] is not None else points[v]["value"]) for v in vs]
        high = [100 * (points[v]["ci_high"] if points[v]["ci_high"] is not None else points[v]["value"]) for v in vs]
        ax.fill_between([x[v] for v in vs], low, high, color=line.get_color(), alpha=0.12)
    ax.set_xticks(range(len(values)), values)
    ax.set(xlabel=axis.replace("_", " "), ylabel="accuracy %", ylim=(0, 102), title=f"{task}: accuracy vs {axis}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: never over a line
    return _save(fig, path)


def variant_plot(leaderboard: list[dict], path: str | Path) -> Path | None:
    """MIMIC average against the sequence-length variant (pool1, pool2, pool4, pool8, pixels4 ...), per checkpoint."""
    by_ckpt: dict[str, dict[str, float]] = defaultdict(dict)
    for r in leaderboard:
        if r["variant"] != "default" and r["mimic_average"] is not None:
            by_ckpt[r["checkpoint"]][r["variant"]] = r["mimic_average"]
    by_ckpt = {c: v for c, v in by_ckpt.items() if len(v) > 1}
    if not by_ckpt:
        return None
    plt = _pyplot()
    variants = sorted({v for vs in by_ckpt.values() for v in vs}, key=lambda v: (not v.startswith("pool"), len(v), v))
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for ckpt, scores in sorted(by_ckpt.items()):
        vs = [v for v in variants if v in scores]
        ax.plot([variants.index(v) for v in vs], [scores[v] for v in vs], marker="o", label=ckpt)
    ax.set_xticks(range(len(variants)), variants)
    ax.set(xlabel="variant (vision-token pooling / pixel control)", ylabel="MIMIC average %", ylim=(0, 100),
           title="Sequence length: accuracy vs variant")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def attention_plot(rows: list[dict], checkpoint: str, path: str | Path) -> Path | None:
    """Per layer: where vision queries look (own image / other images / text), and where the answering
    token looks (each image position, text)."""
    rows = [r for r in rows if r["checkpoint"] == checkpoint]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100, sharey=True)
    for ax, kind, title in ((axes[0], "vision_query", "vision queries attend to"),
                            (axes[1], "final_text", "the answering token attends to")):  # fmt: skip
        targets = sorted({r["target"] for r in rows if r["kind"] == kind}, key=lambda t: (t == "text", t))
        for target in targets:
            points = sorted((r["layer"], 100 * r["share"]) for r in rows if r["kind"] == kind and r["target"] == target)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=target.replace("_", " "))
        ax.set(xlabel="LM layer", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("share of attention %")
    fig.suptitle(f"{checkpoint}: attention by layer")
    return _save(fig, path)


def loss_plot(losses: list[float], path: str | Path, title: str, window: int = 25) -> Path:
    """The training loss per step (faint) and its moving average over `window` steps."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", linewidth=1.8, label=f"mean of {window} steps")
    ax.set(xlabel="step", ylabel="loss (answer tokens)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)
