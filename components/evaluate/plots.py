"""The evaluate stage's figures (PNG, next to the CSV each is drawn from, which DVC plots also renders)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in pipelines and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_recall_at_k(recall: pd.DataFrame, path: Path) -> None:
    """recall: columns k, direction, recall (percent)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for direction, group in recall.groupby("direction"):
        ax.plot(group["k"], group["recall"], marker="o", label=direction)
    ax.set(xscale="log", xlabel="K", ylabel="R@K (%)", ylim=(0, 101), title="Recall@K (test)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, path: Path) -> None:
    """curves: columns run, phase, step and loss/<name>; one panel per run (and phase), one line per loss."""
    panels = list(curves.groupby(["run", "phase"], sort=False)) if len(curves) else []
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.2), squeeze=False)
    for ax, ((run, phase), group) in zip(axes[0], panels):
        for column in sorted(c for c in group.columns if c.startswith("loss/")):
            if group[column].notna().any():
                ax.plot(group["step"], group[column], label=column.removeprefix("loss/"))
        ax.set(title=f"{run} {phase}" if phase != run else run, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
