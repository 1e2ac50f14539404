"""The report's PNG plots (matplotlib, imported only when plotting): Recall@K curves per query
type, and matched vs unmatched candidate histograms per modality pair."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lenscope.client.eval.config import QUERY_TYPES, TYPE_LABEL


def plot_recall_curves(curves: dict[str, dict[str, list[float]]], ks: Sequence[int], path: Path,
                       title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = [t for t in QUERY_TYPES if t in curves]
    fig, axes = plt.subplots(1, max(len(types), 1), figsize=(4.2 * max(len(types), 1), 3.4), squeeze=False)
    for ax, t in zip(axes[0], types):
        for name, ys in curves[t].items():
            ax.plot(list(ks)[:len(ys)], ys, label=name, linewidth=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.set_ylim(0, 1.01)
        ax.set_title(TYPE_LABEL[t])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gap_histograms(samples: dict[str, dict[str, np.ndarray]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in ("image_image", "image_title", "text_image", "text_title") if p in samples]
    if not pairs:
        return
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.6 * len(pairs), 5.4), squeeze=False)
    for j, pair in enumerate(pairs):
        d = samples[pair]
        ax = axes[0][j]
        bins = np.linspace(-0.2, 1.0, 49)
        ax.hist(d["raw_unmatched"], bins=bins, alpha=0.6, density=True, label=f"unmatched ({d['raw_unmatched'].size})")
        ax.hist(d["raw_matched"], bins=bins, alpha=0.6, density=True, label=f"matched ({d['raw_matched'].size})")
        ax.set_title(f"{pair}: raw cosine", fontsize=9)
        ax.legend(fontsize=7)
        ax2 = axes[1][j]
        if "calibrated_matched" in d:
            cb = np.linspace(0, 1, 41)
            ax2.hist(d["calibrated_unmatched"], bins=cb, alpha=0.6, density=True, label="unmatched")
            ax2.hist(d["calibrated_matched"], bins=cb, alpha=0.6, density=True, label="matched")
            ax2.set_title(f"{pair}: calibrated", fontsize=9)
            ax2.legend(fontsize=7)
        else:
            ax2.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
