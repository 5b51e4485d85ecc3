"""Figures drawn from results (never from live objects), saved as PNG, in the style of
:mod:`sweeps.display` (titles, units, display names, one colour per algorithm, the band stated)."""

from __future__ import annotations

from pathlib import Path

from sweeps import display

display.style()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neuro_opt import metrics  # noqa: E402


def curves_figure(
    group_keys: list[str], curves_by_group: dict, path: Path, title: str = "", n_problems: int | None = None
) -> Path:
    """Exploration and exploitation vs queries, mean +/- SEM, one line per algorithm,
    one column per combination of the other group keys."""
    ai = group_keys.index("algorithm") if "algorithm" in group_keys else None
    panels = sorted(
        {tuple(v for i, v in enumerate(k) if i != ai) for k in curves_by_group}, key=lambda r: tuple(str(x) for x in r)
    )
    other = [k for i, k in enumerate(group_keys) if i != ai]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels) + 1, 6), squeeze=False, sharey="row")
    n_runs = 0

    def legend_order(kv):  # GP-BO first, then the benchmarks, in every panel
        return (display.order(kv[0][ai]) if ai is not None else 0, tuple(str(x) for x in kv[0]))

    for key, cur in sorted(curves_by_group.items(), key=legend_order):
        rest = tuple(v for i, v in enumerate(key) if i != ai)
        col = panels.index(rest)
        alg = key[ai] if ai is not None else "all"
        for row, name in enumerate(("exploration", "exploitation")):
            m, s = metrics.mean_sem(cur[name])
            n_runs = max(n_runs, cur[name].shape[0])
            q = np.arange(1, len(m) + 1)
            ax = axes[row, col]
            label = display.algorithm(alg) if (row, col) == (0, 0) else None
            ax.plot(q, 100 * m, color=display.color(alg), label=label)
            ax.fill_between(q, 100 * (m - s), 100 * (m + s), color=display.color(alg), alpha=0.25, lw=0)
            ax.set_ylim(0, 105)
            if col == 0:
                ax.set_ylabel(f"{name}, % of max")
            if row == 1:
                ax.set_xlabel("query")
            if row == 0:
                ax.set_title(", ".join(display.value(k, v) for k, v in zip(other, rest)) or "all")
    axes[0, 0].legend(loc="lower right")
    fig.suptitle(
        f"{title + ': ' if title else ''}exploration and exploitation per query\n"
        f"{display.band_note(n_runs, n_problems)} per line"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def final_vs_param(groups: list[dict], param: str, path: Path, title: str = "", n_problems: int | None = None) -> Path:
    """Final exploration and exploitation vs one grid parameter, one line per algorithm (Fig. S3)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    algs = sorted({g["params"]["algorithm"] for g in groups}, key=display.order)
    factor = display.KEYS[param][1] if param in display.KEYS else 1.0
    for alg in algs:
        gs = sorted((g for g in groups if g["params"]["algorithm"] == alg), key=lambda g: g["params"][param])
        x = [g["params"][param] * factor for g in gs]
        for ax, name in zip(axes, ("exploration_final", "exploitation_final")):
            m = np.array([g["metrics"][name][0] for g in gs]) * 100
            s = np.array([g["metrics"][name][1] for g in gs]) * 100
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=display.color(alg), label=display.algorithm(alg))
            ax.set_xlabel(display.axis(param))
            ax.set_ylabel(display.METRICS.get(name, name))
            ax.set_ylim(0, 105)
    axes[0].legend()
    n = max((g["n"] for g in groups), default=0)
    fig.suptitle(
        f"{title + ': ' if title else ''}final exploration and exploitation vs "
        f"{display.axis(param).split(',')[0]}\n{display.band_note(n, n_problems)} per point"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
