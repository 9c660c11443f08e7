"""The benchmark's figure: OP over tasks per method, and each method's R matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(summary: dict[str, Any], details: dict[str, Any], out: Path) -> None:
    import numpy as np

    runs = {}  # method -> R (or R_auto) averaged over seeds
    for m, by_seed in details["runs"].items():
        mats = [c["R_auto"] or c["R"] for c in by_seed.values()]
        runs[m] = [[float(np.mean([mat[t][i] for mat in mats])) for i in range(t + 1)] for t in range(len(mats[0]))]
    n = len(runs)
    fig, axes = plt.subplots(2, max(n, 1), figsize=(2.6 * n, 6.0), squeeze=False)
    ax0 = fig.add_subplot(2, 1, 1)
    for a in axes[0]:
        a.remove()
    for m, R in runs.items():
        ax0.plot(range(1, len(R) + 1), [float(np.mean(row)) for row in R], marker="o", label=m)
    ax0.set_xlabel("tasks learned")
    ax0.set_ylabel("mean score on tasks so far (%)")
    ax0.set_title(
        f"{summary['stream']} stream, {summary['profile']} profile, {summary['model']}, seeds {summary['seeds']}"
    )
    ax0.legend(fontsize=7, ncol=2)
    for ax, (m, R) in zip(axes[1], runs.items(), strict=True):
        T = len(R)
        grid = [[R[t][i] if i <= t else float("nan") for i in range(T)] for t in range(T)]
        ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(m, fontsize=7)
        ax.set_xlabel("task i", fontsize=7)
        ax.set_ylabel("after task t", fontsize=7)
        for t in range(T):
            for i in range(t + 1):
                ax.text(i, t, f"{R[t][i]:.0f}", ha="center", va="center", fontsize=6, color="w")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
