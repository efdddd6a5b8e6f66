"""The realism report's figure: power spectra, lung-field histograms and example images side by side."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from data.atomic import atomic_write_bytes


def realism_figure(
    path: str | Path,
    candidates: np.ndarray,
    real: np.ndarray,
    curves: dict[str, np.ndarray],
    control: dict[str, np.ndarray],
    report: dict[str, Any],
    n_examples: int = 4,
) -> Path:
    """Write a PNG: spectra (candidates, real, real halves), lung histograms, then candidate and real examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(n_examples, len(candidates), len(real))
    fig = plt.figure(figsize=(max(12.0, 1.8 * 2 * k), 8.0), dpi=100)
    grid = fig.add_gridspec(2, 2 * k, height_ratios=[1.0, 1.1])
    ax_s = fig.add_subplot(grid[0, :k])
    freq = np.arange(1, len(curves["spectrum"]) + 1) / (2.0 * len(curves["spectrum"]))
    ax_s.loglog(freq, curves["spectrum"], label="candidates", color="tab:red")
    ax_s.loglog(freq, curves["spectrum_reference"], label="real", color="black")
    ax_s.loglog(freq, control["spectrum"], label="real half A", color="gray", ls="--", lw=0.8)
    ax_s.loglog(freq, control["spectrum_reference"], label="real half B", color="gray", ls=":", lw=0.8)
    m, c = report["candidates_vs_real"], report["real_vs_real"]
    ax_s.set_title(f"power spectrum: distance {m['spectrum_distance']:.2f} (real/real {c['spectrum_distance']:.2f})", fontsize=9)
    ax_s.set_xlabel("cycles / px (analysis scale)")
    ax_s.legend(fontsize=7)
    ax_h = fig.add_subplot(grid[0, k:])
    edges = np.linspace(0, 1, len(curves["hist"]) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    ax_h.plot(centres, curves["hist"], color="tab:red", label="candidates")
    ax_h.plot(centres, curves["hist_reference"], color="black", label="real")
    ax_h.set_title(
        f"lung-field intensities: EMD {m['lung_histogram_distance']:.3f} (real/real {c['lung_histogram_distance']:.3f})\n"
        f"AUC {m['classifier_auc']:.2f} ({c['classifier_auc']:.2f}), fine detail {m['fine_detail_ratio']:.2f} "
        f"({c['fine_detail_ratio']:.2f}), background {100 * m['background_share']:.0f}% "
        f"(real {100 * m['background_share_reference']:.0f}%)",
        fontsize=8,
    )
    ax_h.set_xlabel("windowed intensity")
    ax_h.legend(fontsize=7)
    for i in range(k):
        for j, (stack, name) in enumerate(((candidates, "candidate"), (real, "real"))):
            ax = fig.add_subplot(grid[1, j * k + i])
            ax.imshow(stack[i], cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
