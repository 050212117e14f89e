"""The training loss plot attached to every checkpoint asset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_path


def loss_plot(losses: list[float], path: str | Path, title: str, window: int = 25) -> Path:
    """PNG of the per-step loss (faint) and its moving average over `window` steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", linewidth=1.8, label=f"mean of {window} steps")
    ax.set(xlabel="step", ylabel="loss (answer tokens)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
