"""Time per GP-BO query vs input-space size, dimensions and history (Fig. S8).

A cell is one (GP mode, device, varied axis): it times the query after ``history``
observations for every value of that axis (``params.values[axis]``), the other two held at
``params.anchor`` (Fig. S8: 10,000 points, 3 dimensions, 1,000 queries). For each setting
(:mod:`sweeps.query_timing`):

1. a discrete grid with exactly ``n_points`` points in ``n_dims`` dimensions (spacing 1, so
   the length-scale bounds are in grid steps as everywhere else) and a random smooth function
   on it (a few Gaussian bumps plus 5 % noise);
2. the GP-BO optimizer of the mode (``conf/algorithm/gpbo.yaml`` for ``variable_rho``, with the
   online setting ``fit_tol: 0.05`` of conf/exp/latency.yaml, ``gpbo_fixed_rho.yaml`` for
   ``fixed_rho``, one replicate, on the device) gets ``history``
   observations straight into its engine (``BatchGP.observe``) at distinct random points (all
   distinct while ``history <= n_points``: the worst case, since a real run repeats points and
   the engine collapses repeats), then one untimed refit; with a refit that stops at convergence
   (``fit_tol`` > 0), untimed refits of all ``fit_steps`` steps until one moves the log marginal
   likelihood by <= ``fit_tol`` (at most ``SETUP_REFITS``): the converged state the
   hyperparameters of a real ``history``-th query are in after as many refits, not one refit away
   from their initial values. The history cell also times, for each
   length in ``params.run_history``, the query after an actual GP-BO run of that length on the
   same function (``history_from: run``: its own UCB queries, repeats included);
3. ``warmup`` untimed queries, then ``repeats`` timed ones: ``tell`` (observe, plus the
   hyperparameter refit in variable-rho) and ``ask`` (UCB over every point, argmax with random
   ties, the point back on the host): what the online loop waits for between a response and
   the next stimulation. In variable-rho on a large space ``ask`` takes the engine's screened
   argmax (``BatchGP.screened``: the posterior mean everywhere by FFT, sigma exactly only where a
   bound says the maximum can be; the same argmax as the full posterior, tested); fixed-rho
   keeps its incrementally updated posterior over every point. Each timed query adds one
   observation, so the history runs ``history + warmup, history + warmup + 1, ...``. Round 1 of a
   setting stops timing early (after at least 3) once its timed queries exceed
   ``max_seconds_per_setting``; later rounds time as many queries as round 1 did.

Rounds (``params.rounds``, :mod:`sweeps.rounds`): steps 1-2 run once per setting; step 3 runs once
per round, interleaved (round 1 times every setting of the cell, then round 2 times them all again,
...), so a burst of load on a shared machine hits every setting of a round alike. Each round times a
copy of the setting's state after step 2 (optimizer and response noise generator), so every round
times the same queries from the same history with the same responses: the history does not grow
from round to round, and the 500th-query figure is the 500th query in every round. The cell holds
every setting's post-setup state at once (the sum over its settings, not the largest). Rows carry
their ``round``; a setting's ``ms_per_query`` is the lowest per-round median (``ms_tell`` and
``ms_ask`` from that same round), with the per-round medians and their spread ((max - min) / min) in
the group's ``rounds`` entry and ``ms_per_query_spread``. The targets (10,000 points, 3-D, history
500) are judged on that lowest per-round median.

Cells take ``cluster.cpus_per_cell`` cores (the exp file asks for 2, the whole of a 2-core
machine, so cells run one at a time and never time each other); torch uses ``params.threads``
threads (null: as many as the cell's cores). On a machine shared with other work, two torch
threads on two busy cores can make small operations many times slower (each parallel region
waits for both threads to be scheduled); ``params.threads=1`` measures without that effect,
and ``ms_per_query_min`` (the fastest timed query) shows the uncontended cost.
``device: cuda`` cells time nothing (zero rows) when no CUDA device is visible to the worker;
the summary lists them under ``skipped``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import metrics
from neuro_opt.threads import intra_op_threads
from sweeps.experiment import Experiment
from sweeps.query_timing import Prepared, grid_space, prepare_queries, time_round
from sweeps.rounds import best_of_rounds, check_rounds
from sweeps.schema import ConfigError

MODES = {"variable_rho": "variable", "fixed_rho": "fixed"}
AXES = ("n_points", "n_dims", "history")
DEVICES = ("cpu", "cuda")
# Published reference (Fig. S8): the 500th query of a 10,000-point 3-D space.
PUBLISHED_MS = {"cpu": 130.0, "cuda": 7.0}
TARGET_MS = {"variable_rho": 50.0, "fixed_rho": 5.0}  # the targets at 10,000 points, 3-D, history 500, CPU
TARGET_SETTING = {"n_points": 10000, "n_dims": 3, "history": 500}

SCHEMA = pa.schema(
    [
        ("mode", pa.string()),
        ("device", pa.string()),
        ("axis", pa.string()),
        ("n_points", pa.int64()),
        ("n_dims", pa.int64()),
        ("history", pa.int64()),
        ("history_from", pa.string()),
        ("n_unique", pa.int64()),
        ("round", pa.int32()),
        ("sample", pa.int32()),
        ("ms_query", pa.float64()),
        ("ms_tell", pa.float64()),
        ("ms_ask", pa.float64()),
        ("fit_steps", pa.int32()),
        ("threads", pa.int32()),
        ("device_name", pa.string()),
    ]
)


def settings_of(params: dict) -> list[dict]:
    """The (n_points, n_dims, history, history_from) settings of a cell: its axis' values, the rest at
    the anchor, history from distinct random points; a ``history`` cell adds ``params.run_history``
    (history lengths from an actual GP-BO run at the anchor's points and dimensions)."""
    axis = params["axis"]
    anchor = {k: int(params["anchor"][k]) for k in AXES}
    out = [{**anchor, axis: int(v), "history_from": "distinct"} for v in params["values"][axis]]
    if axis == "history":
        out += [{**anchor, "history": int(v), "history_from": "run"} for v in params.get("run_history") or []]
    return out


def _prepare(p: dict, s: dict, seed) -> Prepared:
    """Setting ``s``'s untimed setup (steps 1-2), once for all rounds."""
    return prepare_queries(
        p["algorithms"][p["mode"]],
        s["n_points"],
        s["n_dims"],
        s["history"],
        p["device"],
        int(p["warmup"]) + int(p["repeats"]),
        seed,
        s["history_from"],
    )


def _add_rows(p: dict, s: dict, prep: Prepared, rnd: int, dev_name: str, rows: dict) -> None:
    """Time round ``rnd`` of setting ``s`` (step 3) and append its rows to ``rows`` (column -> values)."""
    import torch

    r = time_round(prep, int(p["repeats"]), int(p["warmup"]), float(p["max_seconds_per_setting"]))
    for i, (q, tl, ak, fs) in enumerate(zip(r["ms_query"], r["ms_tell"], r["ms_ask"], r["fit_steps"])):
        for k, v in (
            ("mode", p["mode"]),
            ("device", p["device"]),
            ("axis", p["axis"]),
            ("n_points", s["n_points"]),
            ("n_dims", s["n_dims"]),
            ("history", s["history"]),
            ("history_from", s["history_from"]),
            ("n_unique", prep.n_unique),
            ("round", rnd),
            ("sample", i),
            ("ms_query", q),
            ("ms_tell", tl),
            ("ms_ask", ak),
            ("fit_steps", fs),
            ("threads", torch.get_num_threads()),
            ("device_name", dev_name),
        ):
            rows[k].append(v)


def check_threads(n) -> None:
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(
            f"params.threads={n!r}: torch threads per cell must be an integer >= 1, or null "
            f"for as many as the cell's CPUs (cluster.cpus_per_cell)"
        )


# ------------------------------------------------------------------ the kind
class LatencyKind(Experiment):
    payload_keys = ("kind", "params", "seed")
    problem_keys = None  # type: ignore[assignment]  # None: no problems (grid.expand); Experiment types a method

    def validate(self, cfg, cells) -> None:
        from neuro_opt import algorithms

        if cfg.n_queries is not None:
            raise ConfigError(
                f"n_queries={cfg.n_queries}: the latency experiment has no query budget; the history "
                f"lengths are params.values.history and params.anchor.history"
            )
        for cell in cells:
            p = cell.payload["params"]
            where = f"cell {cell.coords}"
            for key in (
                "mode",
                "device",
                "axis",
                "anchor",
                "values",
                "algorithms",
                "repeats",
                "rounds",
                "warmup",
                "max_seconds_per_setting",
                "threads",
            ):
                if key not in p:
                    raise ConfigError(f"params.{key} is missing ({where}); see conf/exp/latency.yaml")
            if p["mode"] not in MODES:
                raise ConfigError(f"params.mode={p['mode']!r} ({where}): expected one of {', '.join(MODES)}")
            if p["device"] not in DEVICES:
                raise ConfigError(f"params.device={p['device']!r} ({where}): expected cpu or cuda")
            if p["axis"] not in AXES:
                raise ConfigError(f"params.axis={p['axis']!r} ({where}): expected one of {', '.join(AXES)}")
            for k in AXES:
                a = p["anchor"].get(k)
                if not isinstance(a, int) or a < 1:
                    raise ConfigError(f"params.anchor.{k}={a!r}: must be an integer >= 1")
                vals = p["values"].get(k)
                if not isinstance(vals, list) or not vals or any(not isinstance(v, int) or v < 1 for v in vals):
                    raise ConfigError(f"params.values.{k}={vals!r}: must be a non-empty list of integers >= 1")
            rh = p.get("run_history") or []
            if not isinstance(rh, list) or any(not isinstance(v, int) or v < 1 for v in rh):
                raise ConfigError(f"params.run_history={rh!r}: must be a list of integers >= 1 (or empty)")
            if not isinstance(p["repeats"], int) or p["repeats"] < 3:
                raise ConfigError(f"params.repeats={p['repeats']!r}: must be an integer >= 3 (median and SEM)")
            check_rounds(p["rounds"], where)
            if not isinstance(p["warmup"], int) or p["warmup"] < 0:
                raise ConfigError(f"params.warmup={p['warmup']!r}: must be an integer >= 0")
            check_threads(p["threads"])
            if not p["max_seconds_per_setting"] > 0:
                raise ConfigError(f"params.max_seconds_per_setting={p['max_seconds_per_setting']!r}: must be > 0")
            alg = dict(p["algorithms"].get(p["mode"]) or {})
            name = alg.pop("name", None)
            try:  # builds the optimizer once: catches unknown or out-of-range hyperparameters
                opt = algorithms.make(name, grid_space(8, 2), n_reps=1, seed=0, capacity=4, **alg)
            except ValueError as exc:
                raise ConfigError(f"params.algorithms.{p['mode']} ({where}): {exc}") from None
            if getattr(getattr(opt, "gp", None), "mode", None) != MODES[p["mode"]]:
                raise ConfigError(
                    f"params.algorithms.{p['mode']}: algorithm {name!r} is not a {MODES[p['mode']]}-rho GP-BO"
                )

    @staticmethod
    def run_cell(payload: dict, seed_sequence, data) -> pa.Table:
        import torch

        p = payload["params"]
        rows: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}
        if p["device"] == "cuda" and not torch.cuda.is_available():
            return pa.table(rows, schema=SCHEMA)  # skipped: no GPU visible to this worker
        dev_name = torch.cuda.get_device_name(0) if p["device"] == "cuda" else (_cpu_name() or "cpu")
        settings = settings_of(p)
        with intra_op_threads(p["threads"]):
            prepared = [_prepare(p, s, child) for s, child in zip(settings, seed_sequence.spawn(len(settings)))]
            for rnd in range(1, int(p["rounds"]) + 1):  # interleaved: every setting once per round
                for s, prep in zip(settings, prepared):
                    _add_rows(p, s, prep, rnd, dev_name, rows)
        return pa.table(rows, schema=SCHEMA)

    # ------------------------------------------------------------------ report
    def report(self, cfg, table: pa.Table, run_dir: Path, tracker, parent_run: str | None, axes: dict) -> dict:
        keys = ("mode", "n_points", "n_dims", "history", "history_from", "device")
        cols = {k: table[k].to_pylist() for k in keys}
        combos = sorted(set(zip(*cols.values())), key=lambda r: tuple(str(v) if isinstance(v, str) else v for v in r))
        groups = []
        for combo in combos:
            sub = table
            for k, v in zip(keys, combo):
                sub = sub.filter(pc.equal(sub[k], v))
            params = dict(zip(keys, combo))
            m, rounds = _round_metrics(sub)
            m["ms_per_query_min"] = [float(pc.min(sub["ms_query"]).as_py()), 0.0]
            m["ms_per_query_max"] = [float(pc.max(sub["ms_query"]).as_py()), 0.0]
            m["fit_steps"] = _median_sem(sub["fit_steps"].to_numpy())  # Adam steps of the timed refits
            g = {
                "params": params,
                "n": sub.num_rows,
                "metrics": m,
                "threads": int(sub["threads"][0].as_py()),
                "device_name": sub["device_name"][0].as_py(),
                "n_unique": int(sub["n_unique"][0].as_py()),
                "rounds": rounds,
            }
            groups.append(g)
        out = {"groups": groups, "anchor": dict(cfg.params.anchor), "targets": _targets(groups)}
        wanted = axes.get("params.device") or [cfg.params.get("device")]
        skipped = [d for d in wanted if d not in set(cols["device"])]
        if skipped:
            out["skipped"] = [f"device={d}: no rows (no such device visible to the Ray workers)" for d in skipped]
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        if groups:
            latency_figure(groups, dict(cfg.params.anchor), figs / "latency.png")
        return out


def _median_sem(x: np.ndarray) -> list[float]:
    """``[median, SEM]``; the SEM is that of the mean (std / sqrt(n)), 0 for one sample."""
    x = np.asarray(x, dtype=float)
    return [float(np.median(x)), metrics.value_sem(x)[1]]


def _round_metrics(sub: pa.Table) -> tuple[dict, dict]:
    """A setting's query times from its rows (one per timed query, each with its ``round``).

    ``ms_per_query``: the lowest per-round median of ``ms_query`` (a round's median pools the setting's
    rows of that round: for the anchor, its queries in each axis cell), with the SEM of that round's
    queries; ``ms_tell`` and ``ms_ask``: medians of the same round (so they add up to about it);
    ``ms_per_query_spread``: (max - min) / min of the per-round medians. Runs from before rounds (no
    ``round`` column) count as one round. Returns the metrics and the group's ``rounds`` entry
    (``ms_per_query``: the per-round medians, round 1 first; ``spread``; ``best_round``).
    """
    q = sub["ms_query"].to_numpy()
    rnd = sub["round"].to_numpy() if "round" in sub.column_names else np.ones(len(q), dtype=int)
    b = best_of_rounds(q, rnd)
    best = rnd == b["best_round"]
    m = {"ms_per_query": [b["best"], _median_sem(q[best])[1]]}
    for name in ("ms_tell", "ms_ask"):
        m[name] = _median_sem(sub[name].to_numpy()[best])
    m["ms_per_query_spread"] = [b["spread"], 0.0]
    return m, {"ms_per_query": b["medians"], "spread": b["spread"], "best_round": b["best_round"]}


def _targets(groups: list[dict]) -> list[dict]:
    """The issue's latency targets at 10,000 points, 3-D, history 500 on CPU, as measured: with the
    history at distinct random points (the worst case: the target's ``met``), and, where timed,
    after an actual GP-BO run of that length (``history_from: run``, stated beside it)."""
    out = []
    for g in groups:
        p = g["params"]
        if p["device"] == "cpu" and all(p[k] == v for k, v in TARGET_SETTING.items()):
            ms = g["metrics"]["ms_per_query"][0]
            out.append(
                {
                    "params": p,
                    "ms_per_query": ms,
                    "ms_per_query_rounds": g["rounds"]["ms_per_query"],
                    "spread": g["rounds"]["spread"],
                    "target_ms": TARGET_MS[p["mode"]],
                    "met": bool(ms <= TARGET_MS[p["mode"]]),
                    "published_ms": PUBLISHED_MS["cpu"],
                    "n_unique": g["n_unique"],
                }
            )
    return out


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def latency_figure(groups: list[dict], anchor: dict, path: Path) -> Path:
    """ms per query vs each axis (the other two at the anchor), one line per mode x device (Fig. S8)."""
    from sweeps.plots import plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    lines = sorted({(g["params"]["mode"], g["params"]["device"]) for g in groups})
    for ax, axis in zip(axes, AXES):
        others = [k for k in AXES if k != axis]
        for i, (mode, dev) in enumerate(lines):
            gs = sorted(
                (
                    g
                    for g in groups
                    if g["params"]["mode"] == mode
                    and g["params"]["device"] == dev
                    and g["params"]["history_from"] == "distinct"
                    and all(g["params"][k] == anchor[k] for k in others)
                ),
                key=lambda g: g["params"][axis],
            )
            if not gs:
                continue
            x = [g["params"][axis] for g in gs]
            m = [g["metrics"]["ms_per_query"][0] for g in gs]
            s = [g["metrics"]["ms_per_query"][1] for g in gs]
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=f"C{i}", label=f"{mode}, {dev}")
        if axis == "history":
            for i, (mode, dev) in enumerate(lines):
                run = [
                    g
                    for g in groups
                    if g["params"]["mode"] == mode
                    and g["params"]["device"] == dev
                    and g["params"]["history_from"] == "run"
                ]
                if run:
                    ax.plot(
                        [g["params"]["history"] for g in run],
                        [g["metrics"]["ms_per_query"][0] for g in run],
                        marker="s",
                        ls="none",
                        mfc="none",
                        color=f"C{i}",
                        label=f"{mode}, {dev}: after a GP-BO run",
                    )
            for dev, ms in PUBLISHED_MS.items():
                ax.plot(
                    [TARGET_SETTING["history"]],
                    [ms],
                    marker="*",
                    ms=11,
                    ls="none",
                    color="k" if dev == "cpu" else "0.5",
                    label=f"published {dev} ({ms:g} ms, 10k pts, 3-D)",
                )
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_yscale("log")
        if axis == "n_points":
            ax.set_xscale("log")
        ax.set_title(", ".join(f"{k}={anchor[k]}" for k in others), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per query (best round's median +/- SEM)")
    handles: dict[str, Any] = {}  # legend label -> matplotlib artist
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


KIND = LatencyKind()
