"""The throughput summary, made from the run's two Parquet tables only.

``results/phases.parquet`` holds one row per measurement (round, condition, design, engine:
runs, wall time, CPU seconds of the work and of the load, load average), ``results/runs.parquet``
one row per simulated run (its last query). From them :func:`summarize` makes the groups (one per
design, engine and condition: the best round's runs per second and the spread over rounds), the
ratios against the BoTorch reference, the slowdown under load, the batched-vs-apart decision
comparison, the targets and the headline, and :func:`figure` draws ``figures/throughput.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neuro_opt import metrics
from sweeps.throughput.shards import ENGINES

CONDITIONS = ("quiet", "loaded")
NAMES = {"batched": "batched", "apart": "apart (baseline)", "botorch_reference": "BoTorch reference"}


def _vs(values: list[float]) -> list[float]:
    return [float(v) for v in metrics.value_sem(np.asarray(values, dtype=float))]


def groups_of(phases: list[dict], runs: dict[str, np.ndarray]) -> list[dict]:
    """One group per (design, engine, condition), in the order they were measured."""
    keys = list(dict.fromkeys((p["design"], p["engine"], p["condition"]) for p in phases))
    out = []
    for d, e, c in keys:
        mine = [p for p in phases if (p["design"], p["engine"], p["condition"]) == (d, e, c)]
        rates = [p["n_runs"] / p["wall_s"] for p in mine]
        best = mine[int(np.argmax(rates))]
        sel = (runs["design"] == d) & (runs["engine"] == e) & (runs["condition"] == c)
        wall = np.array([p["wall_s"] for p in mine])
        load_share = [p["load_cpu_s"] / (p["wall_s"] * p["load_processes"]) for p in mine if p["load_processes"]]
        out.append(
            {
                "params": {"design": d, "engine": e, "condition": c},
                "n": int(sel.sum()),
                "metrics": {
                    "runs_per_s": [max(rates), _vs(rates)[1]],
                    "runs_per_s_worst": [min(rates), 0.0],
                    "exploration_final": _vs(runs["exploration"][sel]),
                    "exploitation_final": _vs(runs["exploitation"][sel]),
                    "work_cpu_share": _vs([p["work_cpu_s"] / (p["wall_s"] * p["n_shards"]) for p in mine]),
                    "load_cpu_s": _vs([p["load_cpu_s"] for p in mine]),
                    "load_cpu_share": _vs(load_share) if load_share else [0.0, 0.0],
                    "loadavg_1m": _vs([p["loadavg_1m"] for p in mine]),
                },
                "runs_per_round": int(best["n_runs"]),
                "rounds": len(mine),
                "rounds_runs_per_s": [round(r, 4) for r in rates],
                "wall_s": float(best["wall_s"]),
                "wall_s_total": float(wall.sum()),
                "n_shards": int(best["n_shards"]),
                "load_processes": int(best["load_processes"]),
            }
        )
    return out


def _rate(by: dict, d: str, e: str, c: str) -> float | None:
    g = by.get((d, e, c))
    return None if g is None else g["metrics"]["runs_per_s"][0]


def ratios_of(groups: list[dict]) -> list[dict]:
    """Batched (and apart) runs per second over the reference's, per design and condition."""
    by = {tuple(g["params"].values()): g for g in groups}
    out = []
    for d, c in dict.fromkeys((g["params"]["design"], g["params"]["condition"]) for g in groups):
        b, a, r = (_rate(by, d, e, c) for e in ENGINES)
        if r is None or (b is None and a is None):
            continue
        entry: dict[str, Any] = {"design": d, "condition": c, "reference_runs_per_s": r}
        if b is not None:
            entry.update(batched_runs_per_s=b, ratio=b / r)
        if a is not None:
            entry.update(apart_runs_per_s=a, apart_ratio=a / r)
        if a is not None and b is not None:
            entry["batched_over_apart"] = b / a
        out.append(entry)
    return out


def slowdown_of(groups: list[dict]) -> list[dict]:
    """Loaded over quiet runs per second (best rounds), per design and engine."""
    by = {tuple(g["params"].values()): g for g in groups}
    out = []
    for d, e in dict.fromkeys((g["params"]["design"], g["params"]["engine"]) for g in groups):
        q, lo = _rate(by, d, e, "quiet"), _rate(by, d, e, "loaded")
        if q is None or lo is None:
            continue
        load = by[(d, e, "loaded")]
        out.append(
            {
                "design": d,
                "engine": e,
                "quiet_runs_per_s": q,
                "loaded_runs_per_s": lo,
                "fraction": lo / q,
                "load_processes": load["load_processes"],
                "load_cpu_share": load["metrics"]["load_cpu_share"][0],
            }
        )
    return out


def comparisons_of(runs: dict[str, np.ndarray], designs: list[str]) -> list[dict]:
    """Batched minus apart, run for run (same seeds), per design: final exploration and
    exploitation in performance points (mean, SEM, largest difference of one run)."""
    out = []
    for d in designs:
        sides = {}
        for e in ("batched", "apart"):
            sel = np.flatnonzero((runs["design"] == d) & (runs["engine"] == e))
            keys = zip(*(runs[k][sel].tolist() for k in ("round", "condition", "problem", "chunk", "rep")))
            sides[e] = dict(zip(keys, sel))
        common = sorted(set(sides["batched"]) & set(sides["apart"]))
        if not common:
            continue
        ib = np.array([sides["batched"][k] for k in common])
        ia = np.array([sides["apart"][k] for k in common])
        entry: dict[str, Any] = {"params": {"design": d}, "a": "batched", "b": "apart", "n_runs": len(common)}
        same = np.ones(len(common), dtype=bool)
        for name in ("exploration", "exploitation"):
            diff = 100 * (runs[name][ib] - runs[name][ia])
            entry[f"{name}_points_final"], entry[f"{name}_points_final_sem"] = _vs(diff)
            entry[f"{name}_points_max_abs"] = float(np.abs(diff).max())
            same &= diff == 0
        same &= (runs["best"][ib] == runs["best"][ia]) & (runs["point"][ib] == runs["point"][ia])
        entry["identical_runs"] = int(same.sum())
        out.append(entry)
    return out


def targets_of(params: dict, machine: dict, groups, ratios, slowdown, comparisons) -> list[dict]:
    """The issue's targets, as measured in this run, each with the ratio to the reference beside it."""
    t = params["targets"]
    by = {tuple(g["params"].values()): g for g in groups}
    ratio = {(r["design"], r["condition"]): r.get("ratio") for r in ratios}
    cpus = machine["cpus"]
    sized = t.get("cpus") in (None, cpus)
    out = []
    for d in params["designs"]:
        spec = params["design_specs"][d]
        rate = _rate(by, d, "batched", "quiet")
        if spec.get("target_runs_per_s") is not None and rate is not None:
            out.append(
                {
                    "target": f"{d}: batched >= {spec['target_runs_per_s']:g} runs/s on the whole machine "
                    f"({t.get('cpus') or cpus} CPUs), quiet",
                    "value": rate,
                    "met": bool(rate >= spec["target_runs_per_s"]) if sized else None,
                    "vs_reference": ratio.get((d, "quiet")),
                    "cpus": cpus,
                    "unit": "runs/s",
                }
            )
        comp = next((c for c in comparisons if c["params"]["design"] == d), None)
        need = spec.get("target_quality_runs")
        if need is not None and comp is not None:
            pts = [comp["exploration_points_final"], comp["exploitation_points_final"]]
            out.append(
                {
                    "target": f"{d}: batched's final exploration and exploitation within {t['points']:g} point(s) "
                    f"of the baseline engine (apart: params.baseline) on >= {need} runs",
                    "value": pts,
                    "met": bool(max(abs(v) for v in pts) <= t["points"] and comp["n_runs"] >= need),
                    "n_runs": comp["n_runs"],
                    "unit": "points",
                }
            )
        s = next((s for s in slowdown if (s["design"], s["engine"]) == (d, "batched")), None)
        if s is not None:
            out.append(
                {
                    "target": f"{d}: batched under a load of one busy process per core >= "
                    f"{100 * t['loaded_fraction']:.0f} % of quiet",
                    "value": s["fraction"],
                    "met": bool(s["fraction"] >= t["loaded_fraction"]),
                    "vs_reference": ratio.get((d, "loaded")),
                    "load_processes": s["load_processes"],
                    "unit": "fraction",
                }
            )
    return out


def _num(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def headline_of(params: dict, machine: dict, groups, ratios, slowdown, comparisons, targets) -> list[str]:
    by = {tuple(g["params"].values()): g for g in groups}
    lines = []
    for d in params["designs"]:
        spec = params["design_specs"][d]
        parts = []
        for e in ENGINES:
            rates = [(c, _rate(by, d, e, c)) for c in CONDITIONS]
            shown = ", ".join(f"{_num(r)} {c}" for c, r in rates if r is not None)
            if shown:
                parts.append(f"{NAMES[e]} {shown}")
        ratio = [f"{_num(r['ratio'])}x {r['condition']}" for r in ratios if r["design"] == d and "ratio" in r]
        lines.append(
            f"{d} ({spec['n_problems']} problems x {machine['n_reps']} replicates, "
            f"{machine['n_queries'][d]} queries, {machine['cpus']} CPUs), runs/s: {'; '.join(parts)}"
            + (f"; batched / reference: {', '.join(ratio)}" if ratio else "")
        )
    for s in slowdown:
        if s["engine"] == "batched":
            lines.append(
                f"{s['design']}: batched under load runs at {100 * s['fraction']:.0f} % of quiet "
                f"({s['load_processes']} busy processes had {100 * s['load_cpu_share']:.0f} % of their cores)"
            )
    for c in comparisons:
        lines.append(
            f"{c['params']['design']}: batched vs apart on {c['n_runs']} runs: final exploration "
            f"{c['exploration_points_final']:+.2f}, exploitation {c['exploitation_points_final']:+.2f} points "
            f"({c['identical_runs']} runs identical)"
        )
    mark = {True: "met", False: "not met", None: "undecided (another machine size)"}
    for t in targets:
        v = t["value"]
        if t["unit"] == "points":
            shown = f"{v[0]:+.2f}, {v[1]:+.2f} points on {t['n_runs']} runs"
        elif t["unit"] == "fraction":
            shown = f"{100 * v:.0f} % of quiet"
        else:
            shown = f"{_num(v)} runs/s"
        ref = f", {_num(t['vs_reference'])}x the reference" if t.get("vs_reference") else ""
        lines.append(f"target {t['target']}: {mark[t['met']]} ({shown}{ref})")
    quiet = [g["metrics"]["work_cpu_share"][0] for g in groups if g["params"]["condition"] == "quiet"]
    share = f"; in quiet measurements the workers had {100 * float(np.mean(quiet or [0])):.0f} % of their cores"
    lines.append(
        f"machine: {machine['workers']} workers ({machine['cpus_per_worker']:g} CPU, {machine['worker_threads']} "
        f"torch thread(s), niceness {machine['worker_nice']} each); load: {machine['load_processes']} busy "
        f"processes at niceness {machine['load_nice']}; load average {machine['loadavg_at_start'][0]:.1f} at the "
        f"start, {machine['loadavg_at_end'][0]:.1f} at the end" + (share if quiet else "")
    )
    return lines


def summarize(params: dict, machine: dict, phases: list[dict], runs: dict[str, np.ndarray], run_dir: Path) -> dict:
    """The summary body (``summary.json`` beside the runner's keys) and the figure."""
    groups = groups_of(phases, runs)
    ratios = ratios_of(groups)
    slowdown = slowdown_of(groups)
    comparisons = comparisons_of(runs, params["designs"])
    targets = targets_of(params, machine, groups, ratios, slowdown, comparisons)
    figs = Path(run_dir) / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    if groups:
        figure(groups, slowdown, params, machine, figs / "throughput.png")
    return {
        "headline": headline_of(params, machine, groups, ratios, slowdown, comparisons, targets),
        "groups": groups,
        "ratios": ratios,
        "slowdown": slowdown,
        "comparisons": comparisons,
        "targets": targets,
        "machine": machine,
    }


def figure(groups: list[dict], slowdown: list[dict], params: dict, machine: dict, path: Path) -> Path:
    """Runs per second (log scale) by design x engine x condition; loaded / quiet beside it."""
    from sweeps.plots import plt

    designs = list(dict.fromkeys(g["params"]["design"] for g in groups))
    engines = [e for e in ENGINES if any(g["params"]["engine"] == e for g in groups)]
    conds = [c for c in CONDITIONS if any(g["params"]["condition"] == c for g in groups)]
    by = {tuple(g["params"].values()): g for g in groups}
    bars = [(e, c) for e in engines for c in conds]
    width = 0.8 / len(bars)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    for j, (e, c) in enumerate(bars):
        xs, ys, lo, hi = [], [], [], []
        for i, d in enumerate(designs):
            g = by.get((d, e, c))
            if g is None:
                continue
            xs.append(i + (j - (len(bars) - 1) / 2) * width)
            ys.append(g["metrics"]["runs_per_s"][0])
            lo.append(ys[-1] - g["metrics"]["runs_per_s_worst"][0])
            hi.append(0.0)
        ax.bar(
            xs,
            ys,
            width,
            yerr=[lo, hi],
            capsize=2,
            color=f"C{ENGINES.index(e)}",
            alpha=1.0 if c == "quiet" else 0.55,
            hatch="" if c == "quiet" else "//",
            label=f"{NAMES[e]}, {c}",
        )
        for x, y in zip(xs, ys):
            ax.annotate(_num(y), (x, y), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(designs)))
    ax.set_xticklabels(
        [
            f"{d}\n{params['design_specs'][d]['n_problems']} problems x {machine['n_reps']} reps, "
            f"{machine['n_queries'][d]} queries"
            for d in designs
        ]
    )
    ax.set_ylabel(f"complete runs per second, whole machine ({machine['cpus']} CPUs)")
    ax.set_title("best round (bar) and worst round (whisker)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(engines), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax = axes[1]
    for j, e in enumerate(engines):
        xs = [i + (j - (len(engines) - 1) / 2) * (0.8 / len(engines)) for i, d in enumerate(designs)]
        ys = [next((s["fraction"] for s in slowdown if (s["design"], s["engine"]) == (d, e)), np.nan) for d in designs]
        ax.bar(xs, [100 * y for y in ys], 0.8 / len(engines), color=f"C{ENGINES.index(e)}", label=NAMES[e])
    ax.axhline(100 * params["targets"]["loaded_fraction"], ls="--", color="0.4", lw=1, label="target")
    ax.set_xticks(range(len(designs)))
    ax.set_xticklabels(designs)
    ax.set_ylabel("loaded / quiet runs per second, %")
    ax.set_title(f"under {machine['load_processes']} busy processes (one per core)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
