"""Results a person reads: the headline of ``summary.json``, the per-query curves beside it, the
MLflow child runs and the parent's headline metrics, and the table printed at the end of a launch.

Every experiment's report returns ``groups`` (``params``, ``n``, ``metrics`` as ``[value, sem]``,
optionally ``per_query`` curves) and optionally ``findings`` and ``comparisons``; this module turns
them into what a reader sees, once for every experiment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sweeps import display

#: the metric that ranks algorithms at a grid point, in order of preference
RANKED = ("exploitation_final", "exploration_final", "accuracy_final", "objective")
CURVES_FILE = "curves.parquet"


def _pct(v: float) -> str:
    return f"{100 * v:.0f} %"


def best_per_point(groups: list[dict]) -> list[str]:
    """One line per grid point: which algorithm is best on the ranking metric, and the others."""
    with_alg = [g for g in groups if "algorithm" in g.get("params", {})]
    if len({g["params"]["algorithm"] for g in with_alg}) < 2:
        return []
    metric = next((m for m in RANKED if all(m in g["metrics"] for g in with_alg)), None)
    if metric is None:
        return []
    points: dict[tuple, list[dict]] = {}
    for g in with_alg:
        ident = tuple(sorted((k, repr(v)) for k, v in g["params"].items() if k != "algorithm"))
        points.setdefault(ident, []).append(g)
    lines = []
    for gs in points.values():
        gs = sorted(gs, key=lambda g: -g["metrics"][metric][0])
        rest = {k: v for k, v in gs[0]["params"].items() if k != "algorithm"}
        what = metric.replace("_final", "").replace("_", " ")
        first, *others = gs
        tail = ", ".join(
            f"{display.algorithm(g['params']['algorithm'])} {_pct(g['metrics'][metric][0])}" for g in others
        )
        lines.append(
            f"{display.point(rest)}: {display.algorithm(first['params']['algorithm'])} has the best "
            f"final {what} ({_pct(first['metrics'][metric][0])}; {tail})"
        )
    return lines


def headline(body: dict) -> list[str]:
    """One line per finding (holds or not, and its numbers in brief), then the best algorithm per
    grid point."""
    lines = []
    for f in body.get("findings") or []:
        mark = {True: "holds", False: "does not hold", None: "undecided"}.get(f.get("holds"), "undecided")
        brief = f" ({f['brief']})" if f.get("brief") else ""
        lines.append(f"{f.get('finding', '?')}: {mark}{brief}")
    return lines + best_per_point(body.get("groups") or [])


def split_curves(body: dict, run_dir: Path) -> dict[int, dict]:
    """Move the groups' per-query curves into ``curves.parquet`` beside ``summary.json`` (one row per
    group, curve and query: the group's coordinates, ``curve``, ``query``, ``mean``, ``sem``).
    Returns the curves moved, by group index (none when they were moved already)."""
    rows: dict[str, list] = {"group": [], "params": [], "curve": [], "query": [], "mean": [], "sem": []}
    moved: dict[int, dict] = {}
    for i, g in enumerate(body.get("groups") or []):
        moved[i] = g.pop("per_query", None) or {}
        for name, c in moved[i].items():
            for q, (m, s) in enumerate(zip(c["mean"], c["sem"]), start=1):
                rows["group"].append(i)
                rows["params"].append(display.point(g["params"]))
                rows["curve"].append(name)
                rows["query"].append(q)
                rows["mean"].append(m)
                rows["sem"].append(s)
    if rows["group"]:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), Path(run_dir) / CURVES_FILE)
    return {i: c for i, c in moved.items() if c}


def read_curves(run_dir: Path) -> pa.Table:
    """The per-query curves of a launch (:func:`split_curves`)."""
    return pq.read_table(Path(run_dir) / CURVES_FILE)


def metric_key(*parts: str) -> str:
    """An MLflow metric name from words (MLflow allows letters, digits and ``_-. /:``)."""
    text = "/".join(p.replace("/", " ") for p in parts).replace("%", "pct").replace(",", "")
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def headline_metrics(body: dict) -> dict[str, float]:
    """The parent run's metrics: each group's final exploration and exploitation (or its first two
    metrics) named by grid point, and each comparison's performance points."""
    out: dict[str, float] = {}
    for g in body.get("groups") or []:
        names = [m for m in ("exploration_final", "exploitation_final") if m in g["metrics"]] or list(g["metrics"])[:2]
        rest = {k: v for k, v in g["params"].items() if k != "algorithm"}
        # the UI's chart view makes a section per name prefix: one per metric and grid point, holding
        # a chart per algorithm, so the algorithms at one noise level sit side by side
        section, chart = (
            (display.point(rest), display.algorithm(g["params"]["algorithm"]))
            if "algorithm" in g["params"]
            else ("", display.point(g["params"]))
        )
        for m in names:
            value = g["metrics"][m][0]
            if isinstance(value, (int, float)) and value == value:
                out[metric_key(f"{m} {section}".strip(), chart)] = float(value)
    for c in body.get("comparisons") or []:
        if "a" not in c or "b" not in c:
            continue
        for name in ("exploration", "exploitation"):
            v = c.get(f"{name}_points_final")
            if isinstance(v, (int, float)):
                where = display.point(c.get("params") or {})
                out[
                    metric_key(f"{name}_points {where}", f"{display.algorithm(c['a'])} vs {display.algorithm(c['b'])}")
                ] = float(v)
    return out


def log_groups(tracker: Any, parent: str, body: dict, curves: dict[int, dict] | None = None) -> None:
    """One child run per group, named by its grid point, its coordinates as params, its metrics (and
    their SEMs) and per-query mean curves as step metrics; the parent gets the headline metrics and
    the groups as an MLflow table."""
    rows = []
    for i, g in enumerate(body.get("groups") or []):
        params = g["params"]
        run = tracker.start(display.point(params), params=params, parent=parent)
        finite = {k: v for k, v in g["metrics"].items() if isinstance(v[0], (int, float)) and v[0] == v[0]}
        # logged in reading order: the UI's compare view plots the first metric it finds, so the
        # ranking metric (final exploitation) comes first and bookkeeping (n_runs) last
        keys = sorted(finite, key=lambda k: RANKED.index(k) if k in RANKED else len(RANKED))
        tracker.metrics(
            run,
            {
                **{k: finite[k][0] for k in keys},
                **{f"{k}_sem": finite[k][1] for k in keys if isinstance(finite[k][1], (int, float))},
                "n_runs": g["n"],
            },
        )
        for name, c in ((curves or {}).get(i) or {}).items():
            tracker.curves(run, {f"{name}_mean": c["mean"]})
        tracker.end(run)
        rows.append(
            {
                "point": display.point(params),
                "n": g["n"],
                **{k: v[0] for k, v in finite.items()},
                **{f"{k}_sem": v[1] for k, v in finite.items()},
            }
        )
    tracker.metrics(parent, headline_metrics(body))
    if rows:
        columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("point", "n"), k))
        tracker.client.log_table(
            parent, data={c: [r.get(c) for r in rows] for c in columns}, artifact_file="groups.json"
        )


def print_headline(summary: dict, file: Any = None) -> None:
    """The headline as a compact table (rich), for the end of a launch and ``sweeps.report``."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    lines = summary.get("headline") or []
    if not lines:
        return
    table = Table(
        title=f"{summary.get('experiment', '')}: headline",
        title_justify="left",
        show_header=False,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column(overflow="fold")
    for line in lines:
        table.add_row(line)
    console = Console(width=110, soft_wrap=False, color_system=None)
    with console.capture() as captured:
        console.print(table)
    out = file or sys.stdout
    for row in captured.get().splitlines():  # without the cells' trailing padding
        print(row.rstrip(), file=out)
