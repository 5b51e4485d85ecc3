"""TBFM experiments: each cell calls ``neuro_opt.tbfm.cells.run_<params.cell>(params, seed)``.

Grid keys are ``params.X`` (crossed into cells); ``params.rep`` numbers independent
replicates (a different seed each, pooled in the summary). A cell's seed derives from the global
``seed``, ``params.rep`` and the parameters that define the simulated session (``SESSION_KEYS``),
not from the whole cell: replicate ``rep`` is the same session, and its models start from the same
initial weights, whatever the training settings (``n_train``, ``models``, ``max_seconds``, ...) and
in every experiment with the same session parameters, so results across settings are paired
session by session.

Every row also carries its cell's ``cell_wall_s`` and ``cell_cpu_s`` (CPU seconds of the worker
process). The summary groups rows by the grid keys (minus ``report.pool``) and the result columns
in ``report.by`` (e.g. ``model``), and reports each column of ``report.metrics`` as
``[mean, sem]``; ``report.analysis`` adds the experiment's ``findings`` (``sweeps/analyses/``).

Rows timed in interleaved rounds (the latency cell: a ``round`` column, ``params.rounds``) are first
collapsed to one row per timed variant, each ``us_*`` column its lowest over the rounds
(:func:`best_of_rounds_table`); each such group also reports ``rounds``: the per-round medians of
``us_per_forecast``, their spread and the best round, and its ``us_per_forecast`` is the lowest of them.

``report.order`` (chains of ``report.by`` values, e.g. ``[[tbfm, ae_lstm, lssm]]``) adds an
``orderings`` block: for each adjacent pair A > B of a chain, on the first of ``report.metrics``,
the gap of the means over the replicates (seeds) and each model's spread over them (sample
standard deviation and range); the pair holds when the gap exceeds the larger standard deviation,
and ``holds_by_range`` when it also exceeds the larger range. Each pair also carries ``paired``: the
per-seed gaps A - B (rows paired by their ``seed`` column: a seed's models share one simulated
session), their mean and standard deviation; it holds when A > B on every seed and the mean gap
exceeds the gaps' standard deviation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neuro_opt import metrics as M
from neuro_opt.tbfm import cell_setup, cells
from neuro_opt.tbfm.latency import mark_targets
from sweeps import rounds
from sweeps.experiment import Experiment
from sweeps.grid import stable_hash
from sweeps.plots import plt  # the one place that picks the Agg backend
from sweeps.schema import ConfigError

CELLS = {name[len("run_") :]: getattr(cells, name) for name in dir(cells) if name.startswith("run_")}


#: The cell parameters that define a simulated session (with ``rep`` and the global seed, a cell's seed);
#: ``sessions`` only the multi-session cell has (the other cells' seeds hash the first four alone).
SESSION_KEYS = ("n_channels", "n_session", "ipi_ms", "sim", "sessions")


def seed_key(payload: dict) -> str:
    """What a TBFM cell's seed hashes (with the global seed): ``rep`` and the session's resolved parameters."""
    p = dict(payload["params"])
    name, rep = p.pop("cell"), p.pop("rep", 0)
    resolved = cell_setup.resolve_params(p, _EXTRA.get(name, {}))
    return stable_hash({"rep": rep, **{k: resolved[k] for k in SESSION_KEYS if k in resolved}})


class TBFMKind(Experiment):
    payload_keys = ("kind", "params", "seed")
    seed_key = staticmethod(seed_key)  # the launcher seeds a cell from its session, not its whole payload

    def validate(self, cfg, cell_list) -> None:
        for c in cell_list:
            p = dict(c.payload["params"])
            name = p.pop("cell", None)
            if name not in CELLS:
                raise ConfigError(f"params.cell={name!r}: expected one of {', '.join(sorted(CELLS))}")
            p.pop("rep", None)
            try:
                resolved = cell_setup.resolve_params({k: v for k, v in p.items()}, _EXTRA.get(name, {}))
            except ValueError as exc:
                raise ConfigError(f"params ({name}): {exc}") from None
            if name == "latency" and "rounds" in p:  # without it the cell's own default (3)
                rounds.check_rounds(p["rounds"], f"cell {c.coords}")
            if name != "latency":  # the name only: whether the device exists is the worker's to say
                try:
                    torch.device(resolved["device"])
                except (RuntimeError, TypeError, ValueError):
                    raise ConfigError(
                        f"params.device={resolved['device']!r} ({name}): not a torch device name; expected e.g. "
                        f"cpu, cuda, cuda:1 or mps"
                    ) from None
        for key in list(cfg.report.metrics) + list(cfg.report.by):
            if not isinstance(key, str):
                raise ConfigError(f"report.metrics / report.by take column names, got {key!r}")
        if cfg.report.order:
            if not cfg.report.by or not cfg.report.metrics:
                raise ConfigError("report.order needs report.by (the model column) and report.metrics")
            models = {m for c in cell_list for m in (c.payload["params"].get("models") or [])}
            for chain in cfg.report.order:
                if isinstance(chain, str) or len(chain) < 2 or (models and not set(chain) <= models):
                    raise ConfigError(
                        f"report.order: each entry is a list of two or more of params.models "
                        f"{sorted(models)}, got {chain!r}"
                    )

    @staticmethod
    def run_cell(payload: dict, seed_sequence, data) -> pa.Table:
        p = dict(payload["params"])
        fn = CELLS[p.pop("cell")]
        rep = p.pop("rep", 0)
        seed = int(seed_sequence.generate_state(1)[0] % (2**31 - 1))  # from (global seed, seed_key)
        t0, c0 = time.perf_counter(), time.process_time()
        table = fn(p, seed)
        # the whole cell's wall and CPU time (CPU: this worker process), repeated on each of its rows
        for name, value in (("cell_wall_s", time.perf_counter() - t0), ("cell_cpu_s", time.process_time() - c0)):
            if name not in table.column_names:
                table = table.append_column(name, pa.array([float(value)] * table.num_rows, pa.float64()))
        return (
            table.append_column("rep", pa.array([int(rep)] * table.num_rows, pa.int64()))
            if "rep" not in table.column_names
            else table
        )

    def report(self, cfg, table: pa.Table, run_dir: Path, tracker, parent_run: str | None, axes: dict) -> dict:
        pool = set(cfg.report.pool) | {"params.rep"}
        keys = [k for k in axes if k not in pool]
        by = [b for b in cfg.report.by if b in table.column_names]
        cols = [k.replace(".", "_") for k in keys] + by
        names = keys + by
        raw: dict = {}  # rows timed in rounds (the latency cell), by group: one per variant and round
        if "round" in table.column_names:
            for r in table.to_pylist():
                raw.setdefault(tuple(r[c] for c in cols), []).append(r)
            table = best_of_rounds_table(table)  # one row per variant: its lowest over rounds
        wanted = [m for m in cfg.report.metrics if m in table.column_names] or [
            c for c in table.column_names if pa.types.is_floating(table.schema.field(c).type)
        ]
        rows = table.to_pylist()
        groups_rows: dict = {}
        for r in rows:
            groups_rows.setdefault(tuple(r[c] for c in cols), []).append(r)
        groups = []
        for combo in sorted(groups_rows, key=lambda t: tuple(str(x) for x in t)):
            rs = groups_rows[combo]
            mets = {}
            for m in wanted:
                vals = np.array([r[m] for r in rs if r[m] is not None], dtype=float)
                if vals.size:
                    mean, sem = M.mean_sem(vals)
                    mets[m] = [float(mean), float(sem)]
            params = dict(zip(names, combo))
            g = {"params": params, "n": len(rs), "metrics": mets}
            if combo in raw:
                g["rounds"] = _rounds_entry(raw[combo], mets)
            groups.append(g)
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        x = cfg.report.x
        if x and x in keys:
            _figure(
                groups,
                x,
                [n for n in names if n != x],
                wanted,
                figs / f"{wanted[0] if wanted else 'metric'}_vs_{x.replace('.', '_')}.png",
            )
        out: dict[str, Any] = {"groups": groups}
        if cfg.report.order:
            out["orderings"] = orderings(rows, cols, by, [list(c) for c in cfg.report.order], wanted)
        if cfg.report.analysis:  # the experiment's own findings (sweeps/analyses/<name>.py)
            from sweeps import analyses

            out.update(
                analyses.run(
                    cfg.report.analysis,
                    analyses.Context(cfg=cfg, table=table, figures=figs, groups=groups, comparisons=[], kind=self),
                )
            )
        return out


#: The column a latency cell's rounds are judged on (its rows carry ``round``; see neuro_opt.tbfm.latency).
ROUNDS_HEADLINE = "us_per_forecast"


def best_of_rounds_table(table: pa.Table) -> pa.Table:
    """The latency cell's rows (one per variant and round) as one row per variant (:func:`sweeps.rounds.collapse`).

    Every ``us_*`` column becomes its lowest over the rounds (each round's value is already a median,
    p10, p90, ... over that round's forecasts); ``us_per_forecast_rounds`` lists the per-round medians,
    ``us_per_forecast_spread`` is their (max - min) / min. ``speedup``, ``meets_target`` and
    ``meets_speedup`` are recomputed from those lowest medians (:func:`neuro_opt.tbfm.latency.mark_targets`
    with the uncompiled variant of the same cell): each side of the speedup is its own best-of-rounds
    figure, the two numbers the summary shows, so a stall that hit one side of one round does not move
    it (the Parquet rows keep each round's own speedup, paired within the round).
    """
    derived = ("speedup", "meets_target", "meets_speedup", "target_us")
    out = rounds.collapse(table.to_pylist(), lambda c: c.startswith("us_"), ROUNDS_HEADLINE, derived)
    mark_targets(out, same=("cell",))
    return pa.Table.from_pylist(out)


def _rounds_entry(raw: list[dict], mets: dict) -> dict:
    """A group's rounds from its raw rows (``mets`` updated in place): the per-round medians of
    ``us_per_forecast`` (a round's median over the group's rows of that round: the round's own median
    when the group is one variant), the lowest of them as the group's ``us_per_forecast`` (SEM over its
    variants, 0 for one), and their spread as ``us_per_forecast_spread``."""
    b = rounds.best_of_rounds([r[ROUNDS_HEADLINE] for r in raw], [r["round"] for r in raw])
    mets[ROUNDS_HEADLINE] = [b["best"], mets[ROUNDS_HEADLINE][1] if ROUNDS_HEADLINE in mets else 0.0]
    mets[f"{ROUNDS_HEADLINE}_spread"] = [b["spread"], 0.0]
    return {ROUNDS_HEADLINE: b["medians"], "spread": b["spread"], "best_round": b["best_round"]}


def orderings(rows: list[dict], cols: list[str], by: list[str], chains: list[list], wanted: list[str]) -> dict:
    """Is ``A > B`` by more than the spread over seeds, for each adjacent pair of each chain?

    The first ``report.by`` column names the model; every other group column must agree
    (one ordering block per combination of the other columns). ``validate`` has checked that
    ``report.by`` and ``report.metrics`` are set.
    """
    metric, label = wanted[0], by[0]
    others = [c for c in cols if c != label]
    per: dict = {}
    by_seed: dict = {}  # the same rows keyed by session seed, for the paired comparison
    for r in rows:
        if r.get(metric) is not None:
            key = tuple(r[c] for c in others)
            per.setdefault(key, {}).setdefault(r[label], []).append(float(r[metric]))
            if r.get("seed") is not None:
                by_seed.setdefault(key, {}).setdefault(r[label], {})[int(r["seed"])] = float(r[metric])
    blocks = []
    for combo, models in sorted(per.items(), key=lambda kv: str(kv[0])):
        pairs = []
        for chain in chains:
            for a, b in zip(chain, chain[1:]):
                if a not in models or b not in models:
                    raise ConfigError(f"report.order: {a!r} or {b!r} has no {metric} rows; models: {sorted(models)}")
                va, vb = np.array(models[a]), np.array(models[b])
                sd = max(
                    float(np.std(va, ddof=1)) if va.size > 1 else 0.0, float(np.std(vb, ddof=1)) if vb.size > 1 else 0.0
                )
                rng = max(float(np.ptp(va)), float(np.ptp(vb)))
                gap = float(va.mean() - vb.mean())
                pairs.append(
                    {
                        "better": a,
                        "worse": b,
                        "gap": gap,
                        "spread_sd": sd,
                        "spread_range": rng,
                        "n_seeds": [int(va.size), int(vb.size)],
                        "holds": gap > sd,
                        "holds_by_range": gap > rng,
                        "paired": _paired(by_seed.get(combo, {}).get(a, {}), by_seed.get(combo, {}).get(b, {})),
                    }
                )
        blocks.append(
            {**dict(zip(others, combo)), "metric": metric, "pairs": pairs, "holds": all(p["holds"] for p in pairs)}
        )
    return {
        "rule": "mean(A) - mean(B) > max(sd_A, sd_B) over the seeds (holds_by_range: > max(range_A, range_B)); "
        "paired: A - B on each seed's session, holds when mean(A - B) > sd(A - B) and A > B on every seed",
        "blocks": blocks,
        "holds": all(b["holds"] for b in blocks),
    }


def _paired(a: dict, b: dict) -> dict:
    """A - B on the sessions (seeds) both models ran on: the models share each seed's simulated session, so
    the session-to-session spread, which the unpaired rule counts against the gap, cancels here."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    sd = float(np.std(d, ddof=1)) if d.size > 1 else None  # undefined for fewer than two seeds
    mean = float(d.mean()) if d.size else None
    return {
        "n": int(d.size),
        "gaps": [float(x) for x in d],
        "mean": mean,
        "sd": sd,
        "n_better": int((d > 0).sum()),
        "holds": bool(sd is not None and mean is not None and mean > sd and (d > 0).all()),  # sd set: mean set
    }


_EXTRA = {
    "sample_efficiency": {"models": None, "horizons": None, "latency": None, "latency_calls": None, "max_bases": None},
    "compare": {"models": None, "horizons": None, "latency": None, "latency_calls": None, "max_bases": None},
    "fsam": {"max_bases": None, "patience": None, "min_delta": None, "hidden": None},
    "latency": {
        "models": None,
        "compiled": None,
        "streaming": None,
        "horizons": None,
        "device": None,
        "rank": None,
        "n_calls": None,
        "warmup": None,
        "rounds": None,
    },
    "control": {"target_step": None, "n_mix": None},
    "multisession": {"sessions": None, "hidden": None, "depth": None, "horizons": None},
}


def _figure(groups: list[dict], x: str, series_keys: list[str], wanted: list[str], path: Path) -> None:
    """Each metric vs the x grid key, one line per combination of the other keys."""
    mets = wanted[:4]
    fig, axes = plt.subplots(1, len(mets), figsize=(4.2 * len(mets), 3.6), squeeze=False)
    series: dict = {}
    for g in groups:
        series.setdefault(tuple(g["params"].get(k) for k in series_keys), []).append(g)
    for i, (label, gs) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
        gs = sorted(gs, key=lambda g: g["params"][x])
        for ax, m in zip(axes[0], mets):
            pts = [(g["params"][x], *g["metrics"][m]) for g in gs if m in g["metrics"]]
            if not pts:
                continue
            xs, ms, ss = zip(*pts)
            ax.errorbar(
                xs,
                ms,
                yerr=ss,
                marker="o",
                capsize=3,
                color=f"C{i}",
                label=", ".join(f"{k}={v}" for k, v in zip(series_keys, label)),
            )
            ax.set_xlabel(x)
            ax.set_ylabel(m)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


KIND = TBFMKind()
