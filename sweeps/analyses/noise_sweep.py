"""Fig. S3: what the noise sweep is expected to show, stated as findings of its summary.

1. GP-BO's final exploitation exceeds extensive search's at every noise level up to 50 %.
2. The final exploration of every algorithm falls as noise grows. Per algorithm: the final
   exploration at each level (mean and SEM over runs), the change at each step between adjacent
   levels (and that change in SEMs of the difference), whether no step rises (``falls``), whether
   no step rises from the first non-zero level on, whether no step rises by more than 2 SEMs, and
   Spearman's rho of the final exploration with the noise level (exact one-sided p for a falling
   trend). The finding holds when no step of any algorithm rises; ``holds_from_first_nonzero_level``
   and ``holds_within_2_sem`` state the two weaker readings.

The generic report has already drawn the figure (``final_vs_noise.png``); this analysis only
reads the summary groups and comparisons.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from sweeps import display
from sweeps.analyses import finding
from sweeps.analyses._common import one_sided, spearman

MAX_NOISE_EXPLOITATION = 0.5  # "at every noise level up to 50 %"
RISE_SEM = 2.0  # a rise within this many SEMs of the difference is within the spread of the runs

# one step between adjacent noise levels ("from" is a keyword, hence the functional form)
_Step = TypedDict("_Step", {"from": float, "to": float, "change": float, "change_in_sem": float | None})


def _final(ctx, algorithm: str, noise: float, column: str):
    g = ctx.group(algorithm=algorithm, noise=noise)
    return None if g is None else g["metrics"][column]


def _exploitation_finding(ctx, levels: list[float]) -> dict:
    text = (
        f"GP-BO's final exploitation exceeds extensive search's at every noise level up to {MAX_NOISE_EXPLOITATION:.0%}"
    )
    published = (
        "GP-BO retains robust decision capacity across signal-to-noise ratios and always outperforms "
        "the benchmark strategies (Fig. S3)"
    )
    rule = f"mean final exploitation of gpbo > extensive at every level <= {MAX_NOISE_EXPLOITATION:g}"
    low = [n for n in levels if n <= MAX_NOISE_EXPLOITATION]
    rows = []
    for n in low:
        a, b = _final(ctx, "gpbo", n, "exploitation_final"), _final(ctx, "extensive", n, "exploitation_final")
        if a is None or b is None:
            return finding(text, published, None, rule=rule, reason="needs gpbo and extensive at every level")
        c = ctx.comparison("gpbo", "extensive", noise=n)
        rows.append(
            {
                "noise": n,
                "gpbo": a[0],
                "extensive": b[0],
                "points": 100 * (a[0] - b[0]),
                "p_greater": None if c is None else c.get("exploitation_p_value"),
            }
        )
    if not rows:
        return finding(text, published, None, rule=rule, reason=f"no noise level <= {MAX_NOISE_EXPLOITATION:g}")
    pts = [r["points"] for r in rows]
    brief = f"GP-BO minus extensive search: {min(pts):+.0f} to {max(pts):+.0f} points over {len(rows)} levels"
    return finding(text, published, all(r["points"] > 0 for r in rows), brief=brief, levels=rows, rule=rule)


def _trend(ctx, algorithm: str, levels: list[float]) -> dict:
    stats = [_final(ctx, algorithm, n, "exploration_final") for n in levels]
    means = np.array([s[0] for s in stats])
    sems = np.array([s[1] for s in stats])
    steps: list[_Step] = []
    for i in range(1, len(levels)):
        change = float(means[i] - means[i - 1])
        se = float(np.hypot(sems[i], sems[i - 1]))
        steps.append(
            {"from": levels[i - 1], "to": levels[i], "change": change, "change_in_sem": change / se if se > 0 else None}
        )
    rho, p_two = spearman(levels, means)  # nan when undefined: summary.json writes it as null
    first = next((i for i, n in enumerate(levels) if n > 0), len(levels))
    return {
        "exploration_final": [float(m) for m in means],
        "sem": [float(s) for s in sems],
        "steps": steps,
        "falls": all(s["change"] <= 0 for s in steps),
        "falls_from_first_nonzero_level": all(s["change"] <= 0 for s in steps[first:]),
        "no_rise_beyond_2_sem": all(
            s["change"] <= 0 or (s["change_in_sem"] is not None and s["change_in_sem"] <= RISE_SEM) for s in steps
        ),
        "spearman_rho": rho,
        "p_falling": one_sided(rho, p_two, -1),
    }


def analyze(ctx) -> dict:
    levels = sorted({float(g["params"]["noise"]) for g in ctx.groups if "noise" in g["params"]})
    algorithms = sorted({g["params"]["algorithm"] for g in ctx.groups if "algorithm" in g["params"]})
    trends = {
        a: _trend(ctx, a, levels)
        for a in algorithms
        if all(ctx.group(algorithm=a, noise=n) is not None for n in levels)
    }
    rule = "no step between adjacent noise levels raises an algorithm's mean final exploration"
    text = "The final exploration of every algorithm falls as noise grows"
    published = "Fig. S3: exploration vs noise level, 0 to 100 % of the maximum response"
    if len(levels) < 2 or not trends:
        explore = finding(text, published, None, rule=rule, reason="needs two or more noise levels per algorithm")
    else:
        brief = "; ".join(
            f"{display.algorithm(a)} {100 * t['exploration_final'][0]:.0f} -> "
            f"{100 * t['exploration_final'][-1]:.0f} %"
            + (f" (Spearman rho {t['spearman_rho']:.2f})" if np.isfinite(t["spearman_rho"]) else "")
            for a, t in trends.items()
        )
        explore = finding(
            text,
            published,
            all(t["falls"] for t in trends.values()),
            brief=brief,
            algorithms=trends,
            rule=rule,
            holds_from_first_nonzero_level=all(t["falls_from_first_nonzero_level"] for t in trends.values()),
            holds_within_2_sem=all(t["no_rise_beyond_2_sem"] for t in trends.values()),
        )
    return {"findings": [_exploitation_finding(ctx, levels), explore]}
