"""How results read for a person: display names, units, one colour per algorithm, the figure style.

Every figure, MLflow run name and headline line takes its words from here, so GP-BO is "GP-BO"
and noise is "% of max response" everywhere, and an algorithm keeps its colour across figures.
"""

from __future__ import annotations

from typing import Any

#: code name -> the name a reader knows
ALGORITHMS = {
    "gpbo": "GP-BO",
    "gpbo_fixed_rho": "GP-BO (fixed rho)",
    "gpbo_botorch": "GP-BO (BoTorch reference)",
    "gpbo_product": "GP-BO (space x time kernel)",
    "extensive": "extensive search",
    "greedy": "greedy search",
    "greedy_line": "greedy search (line)",
    "hierarchical": "hierarchical GP-BO",
    "flat": "flat GP-BO (space x time kernel)",
}
#: one colour per algorithm, in every figure (matplotlib's tab10, in a fixed order)
COLORS = {
    "gpbo": "#1f77b4",
    "extensive": "#ff7f0e",
    "greedy": "#2ca02c",
    "greedy_line": "#98df8a",
    "gpbo_fixed_rho": "#9467bd",
    "gpbo_botorch": "#8c564b",
    "gpbo_product": "#17becf",
    "hierarchical": "#d62728",
}
_SPARE = ("#7f7f7f", "#bcbd22", "#e377c2")

#: grid key -> (axis label with unit, factor from the stored value to the shown one, short form)
KEYS: dict[str, tuple[str, float, str]] = {
    "noise": ("response noise, % of max response", 100.0, "noise {} %"),
    "algorithm.kappa": ("kappa (UCB exploration weight)", 1.0, "kappa {}"),
    "algorithm.rho_high": ("rho_high (length-scale bound, grid steps)", 1.0, "rho_high {}"),
    "algorithm.rho_low": ("rho_low (length-scale bound, grid steps)", 1.0, "rho_low {}"),
    "n_queries": ("queries", 1.0, "{} queries"),
}
#: metric -> what it is, with its unit
METRICS = {
    "exploration": "exploration, % of max (truth at the believed best)",
    "exploitation": "exploitation, % of max (truth at the point queried)",
    "exploration_final": "final exploration, % of max",
    "exploitation_final": "final exploitation, % of max",
}


def algorithm(name: Any) -> str:
    """The display name of an algorithm (its code name when it has none)."""
    return ALGORITHMS.get(str(name), str(name))


def order(name: Any) -> int:
    """An algorithm's place in legends: GP-BO first, then the benchmarks (a sort key)."""
    return list(ALGORITHMS).index(str(name)) if str(name) in ALGORITHMS else len(ALGORITHMS)


def color(name: Any) -> str:
    """The colour of an algorithm, the same in every figure."""
    key = str(name)
    if key not in COLORS:
        COLORS[key] = _SPARE[len([k for k in COLORS if k not in ALGORITHMS]) % len(_SPARE)]
    return COLORS[key]


def axis(key: str) -> str:
    """The axis label of a grid key, with its unit."""
    return KEYS[key][0] if key in KEYS else key


def value(key: str, v: Any) -> str:
    """One grid coordinate in words: ``value("noise", 0.25) == "noise 25 %"``."""
    if key == "algorithm":
        return algorithm(v)
    if v is None:
        return f"{key.split('.')[-1]} n/a"
    if key in KEYS:
        _, factor, form = KEYS[key]
        shown = v * factor if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        return form.format(f"{shown:g}" if isinstance(shown, float) else shown)
    return f"{key.split('.')[-1]} {v}"


def point(params: dict) -> str:
    """A grid point in words, algorithm first: ``"GP-BO, noise 25 %"`` (``"all"`` when empty)."""
    keys = sorted(params, key=lambda k: k != "algorithm")
    return ", ".join(value(k, params[k]) for k in keys) or "all"


def band_note(n_runs: int, n_problems: int | None = None) -> str:
    """What a band or error bar is, stated on the figure."""
    per = ""
    if n_problems and n_runs % n_problems == 0:
        per = f" ({n_problems} problems x {n_runs // n_problems} replicates)"
    return f"mean +/- SEM over {n_runs} runs{per}"


def style() -> None:
    """The one figure style (call before drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {
            "figure.dpi": 110,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "legend.fontsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "figure.titlesize": 11,
        }
    )
