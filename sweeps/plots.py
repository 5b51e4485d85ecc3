"""Figures drawn from results (never from live objects), saved as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neuro_opt import metrics  # noqa: E402


def curves_figure(group_keys: list[str], curves_by_group: dict, path: Path) -> Path:
    """Exploration and exploitation vs queries, mean +/- SEM, one line per algorithm,
    one column per combination of the other group keys."""
    ai = group_keys.index("algorithm") if "algorithm" in group_keys else None
    panels = sorted({tuple(v for i, v in enumerate(k) if i != ai) for k in curves_by_group},
                    key=lambda r: tuple(str(x) for x in r))
    other = [k for i, k in enumerate(group_keys) if i != ai]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels) + 1, 5.5), squeeze=False, sharey="row")
    colors: dict = {}
    for key, cur in sorted(curves_by_group.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        rest = tuple(v for i, v in enumerate(key) if i != ai)
        col = panels.index(rest)
        label = key[ai] if ai is not None else "all"
        color = colors.setdefault(label, f"C{len(colors)}")
        for row, name in enumerate(("exploration", "exploitation")):
            m, s = metrics.mean_sem(cur[name])
            q = np.arange(1, len(m) + 1)
            ax = axes[row, col]
            ax.plot(q, 100 * m, color=color, label=label if (row, col) == (0, 0) else None)
            ax.fill_between(q, 100 * (m - s), 100 * (m + s), color=color, alpha=0.25, lw=0)
            ax.set_ylim(0, 105)
            if col == 0:
                ax.set_ylabel(f"{name} (% of max)")
            if row == 1:
                ax.set_xlabel("query")
            if row == 0:
                ax.set_title(", ".join(f"{k}={v}" for k, v in zip(other, rest)) or "all", fontsize=9)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def final_vs_param(groups: list[dict], param: str, path: Path) -> Path:
    """Final exploration and exploitation vs one grid parameter, one line per algorithm (Fig. S3)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    algs = sorted({g["params"]["algorithm"] for g in groups})
    for i, alg in enumerate(algs):
        gs = sorted((g for g in groups if g["params"]["algorithm"] == alg), key=lambda g: g["params"][param])
        x = [g["params"][param] for g in gs]
        for ax, name in zip(axes, ("exploration_final", "exploitation_final")):
            m = np.array([g["metrics"][name][0] for g in gs]) * 100
            s = np.array([g["metrics"][name][1] for g in gs]) * 100
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=f"C{i}", label=alg)
            ax.set_xlabel(param)
            ax.set_ylabel(f"{name.replace('_', ' ')} (% of max)")
            ax.set_ylim(0, 105)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
