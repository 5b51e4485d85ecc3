"""The latency cell (:func:`run_latency`) and its timers: batch-1 and streamed forecasts, the weight map's floor."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from neuro_opt.tbfm.base import resolve_device
from neuro_opt.tbfm.cell_setup import build_and_fit, cell_session, cell_split, derive_seed, resolve_params
from neuro_opt.tbfm.compile import compile_tbfm
from neuro_opt.tbfm.data import stim_descriptor
from neuro_opt.tbfm.model import TBFM, fit_tbfm
from neuro_opt.threads import intra_op_threads

#: The issue's latency targets: compiled forecast <= 100 us (94 channels, runway 20, horizon 164,
#: 12 bases) and compiled at least 1.5x faster than uncompiled.
LATENCY_TARGET_US = 100.0
SPEEDUP_TARGET = 1.5
#: The TBFM model names: the models with a weight map (``rank`` applies; ``compiled`` compiles them).
TBFM_NAMES = ("tbfm", "tbfm_adamw", "tbfm_sham")


def time_forecasts(fn, runways: list, n_calls: int = 1000, warmup: int = 100) -> dict:
    """Time ``fn(runway)`` over ``n_calls`` calls cycling through ``runways``, with ``time.perf_counter``.

    Returns ``us_per_forecast`` (median), ``us_p10``, ``us_p90``, ``us_iqr``, ``us_mean`` (microseconds).
    """
    for i in range(warmup):
        fn(runways[i % len(runways)])
    t = np.empty(n_calls)
    for i in range(n_calls):
        x = runways[i % len(runways)]
        t0 = time.perf_counter()
        fn(x)
        t[i] = time.perf_counter() - t0
    return _us_stats(t * 1e6)


def _us_stats(t: np.ndarray) -> dict:
    """The latency columns of timings ``t`` in microseconds: median, p10, p90, IQR and mean."""
    q10, q25, q50, q75, q90 = np.percentile(t, [10, 25, 50, 75, 90])
    return {
        "us_per_forecast": float(q50),
        "us_p10": float(q10),
        "us_p90": float(q90),
        "us_iqr": float(q75 - q25),
        "us_mean": float(t.mean()),
    }


def time_streaming(stream, runways: list, n_calls: int = 1000, warmup: int = 100) -> dict:
    """Time a :class:`~neuro_opt.tbfm.compile.StreamingForecast` the way a closed loop uses it.

    Each call streams one runway in: its first ``R - 1`` samples untimed (``push`` then ``advance``,
    as between samples), then the timed ``push`` of the last sample, which returns the forecast, then
    the timed ``advance`` that readies the next forecasts before the next sample arrives.

    Returns :func:`time_forecasts`' columns for the last push, and ``us_advance``, ``us_advance_p90``
    (the work between samples; in a 1 kHz loop a sample's push and advance share 1000 us).
    """
    t = np.empty((n_calls, 2))
    for i in range(warmup + n_calls):
        x = runways[i % len(runways)]
        for r in range(x.shape[0] - 1):
            stream.push(x[r])
            stream.advance()
        t0 = time.perf_counter()
        y = stream.push(x[-1])
        t1 = time.perf_counter()
        stream.advance()
        t2 = time.perf_counter()
        if y is None:
            raise RuntimeError("the stream returned no forecast after a whole runway")
        if i >= warmup:
            t[i - warmup] = (t1 - t0, t2 - t1)
    t *= 1e6
    return {
        **_us_stats(t[:, 0]),
        "us_advance": float(np.median(t[:, 1])),
        "us_advance_p90": float(np.percentile(t[:, 1], 90)),
    }


def time_map_floor(compiled, n_calls: int = 1000, warmup: int = 100) -> dict:
    """The floor under a compiled forecast given the whole runway: the same weight map read once.

    Every forecast from the whole runway multiplies the runway by the compiled weight map (``A``, or
    ``U`` and ``V``), so it cannot be faster than reading the map's bytes once. ``us_read_floor`` is the
    median time of ``torch.sum`` over those arrays (a multithreaded pure read, at the cell's thread
    count); ``us_bare_matvec`` the median time of the map's matrix-vector product alone (no offset, no
    bases, no NaN check). Both are timed like :func:`time_forecasts`, in the same cell as the forecast
    they bound, so their ratio to it moves less with the machine's load than either does.
    """
    mats = [m for m in (compiled.A, compiled.U, compiled.V) if m is not None]
    if not mats:  # state-agnostic: no weight map
        return {"us_read_floor": None, "us_bare_matvec": None, "map_mb": 0.0}
    ts = [torch.from_numpy(m) for m in mats]
    x = np.ones(compiled.runway * compiled.n_channels, np.float32)
    if compiled.A is not None:

        def matvec(_):
            return compiled.A @ x
    else:

        def matvec(_):
            return compiled.U @ (compiled.V @ x)

    read = time_forecasts(lambda _: [t.sum() for t in ts], [None], n_calls, warmup)
    mv = time_forecasts(matvec, [None], n_calls, warmup)
    return {
        "us_read_floor": read["us_per_forecast"],
        "us_bare_matvec": mv["us_per_forecast"],
        "map_mb": float(sum(m.nbytes for m in mats) / 1e6),
    }


def forecast_fn(model, compiled, ipi: int, lead: int, device: str | torch.device):
    """A batch-1 forecast function on a numpy ``R x C`` float32 runway, returning a numpy ``H x C`` forecast."""
    if compiled is not None:
        return lambda x: compiled.predict_one(x, ipi)
    stim = torch.from_numpy(stim_descriptor(ipi, model.horizon, lead)).to(device)
    idx = torch.zeros(1, dtype=torch.long, device=device)
    model.eval().to(device)

    def fn(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device).unsqueeze(0), stim, idx)[0].cpu().numpy()

    return fn


def run_latency(params: dict, seed: int) -> pa.Table:
    """Batch-1 forecast latency, compiled vs uncompiled TBFM and baselines.

    Each model is first trained briefly on a small simulated session (latency
    does not depend on how long it trained); then ``n_calls`` forecasts of
    distinct test runways are timed one by one with ``time.perf_counter``
    (including numpy -> torch conversion, z-scoring, and device transfers).
    With ``streaming`` (default True) each compiled TBFM also gets a ``streaming`` row: the same
    forecast computed as the runway arrives (:meth:`CompiledTBFM.stream`), timed from the last
    runway sample to the forecast (:func:`time_streaming`), with the work between samples in
    ``us_advance``.

    Timing runs in ``rounds`` interleaved rounds: every variant (model, compiled, streaming, device,
    horizon) is trained, compiled and given its forecast function once; then round 1 times each
    variant once (``warmup`` untimed and ``n_calls`` timed forecasts), round 2 times them all again,
    and so on, so a burst of load on the machine hits every variant of a round alike. Each round's
    row is that round's median; whoever reads them takes the lowest over rounds (the sweep's summary
    does, see :mod:`sweeps.rounds`).

    Extra params: ``models`` (default ``["tbfm"]``; ``lssm``, ``ae_lstm``,
    ``tbfm_sham`` allowed), ``compiled`` (default ``[False, True]``; compiled
    applies to TBFM models only), ``streaming`` (default True), ``horizons`` (default ``[40, 164]``),
    ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"`` = both when a GPU is present),
    ``rank`` (None: full weight map; k: rank-k TBFM), ``n_calls`` (1000),
    ``warmup`` (100), ``rounds`` (3). Defaults here use ``n_channels=94, n_session=500, n_train=300,
    n_test=100`` and ``sim={"bad_fraction": 0.0}`` (all 94 channels usable, as in the paper's
    94-electrode benchmark).

    With ``rank`` set, only the TBFM models are run (the baselines have no weight map; they are
    timed in the full-rank cell).

    Returns one row per (model, compiled, streaming, device, horizon_ms, round): ``model, compiled,
    streaming, device, n_channels, n_usable, horizon_ms, runway_ms, n_bases, rank, threads, round``
    (1, 2, ...), ``us_per_forecast`` (median of the round), ``us_p10, us_p90, us_iqr, us_mean,
    us_advance, us_advance_p90`` (streaming rows; None otherwise), ``us_read_floor, us_bare_matvec,
    map_mb`` (compiled rows given the whole runway, see :func:`time_map_floor`; None otherwise),
    ``n_calls``, and the targets of the issue (:func:`mark_targets`, paired within the round).
    """
    p = resolve_params(
        params,
        {
            "models": ["tbfm"],
            "compiled": [False, True],
            "streaming": True,
            "horizons": [40, 164],
            "device": "cpu",
            "rank": None,
            "n_calls": 1000,
            "warmup": 100,
            "rounds": 3,
        },
    )
    rounds = p["rounds"]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}: expected an integer >= 1 (interleaved timing rounds)")
    for k, v in {
        "n_channels": 94,
        "n_session": 500,
        "n_train": 300,
        "n_test": 100,
        "sim": {"bad_fraction": 0.0},
    }.items():  # every simulated channel usable: C = n_channels
        if k not in (params or {}):
            p[k] = v
    devices = (
        ["cpu"]
        if p["device"] == "cpu"
        else ["cuda"]
        if p["device"] == "cuda"
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    if "cuda" in devices:
        resolve_device("cuda")  # a one-line ValueError: what was asked, what exists
    with intra_op_threads(p["threads"], blas=True):
        variants = _variants(p, seed, devices)
        rows = [
            {**meta, "round": rnd, **time_variant(), "n_calls": int(p["n_calls"])}
            for rnd in range(1, rounds + 1)  # interleaved: every variant once per round
            for meta, time_variant in variants
        ]
    mark_targets(rows, same=("round",))
    return pa.Table.from_pylist(rows)


def mark_targets(rows: list[dict], same: tuple[str, ...] = ()) -> None:
    """Add the issue's targets to each latency row (in place).

    ``target_us`` (100: compiled forecast <= 0.1 ms at 94 channels, horizon 164), ``meets_target``
    (1.0 when ``us_per_forecast <= target_us``, else 0.0), ``speedup`` (the uncompiled row's
    ``us_per_forecast`` for the same model and horizon, on the CPU for a compiled row, else on the
    row's device, and with the same values of the ``same`` columns, over this row's; 1 for uncompiled
    rows; NaN without such a row) and ``meets_speedup`` (1.0 when ``speedup >= 1.5``).

    The cell pairs within a round (``same=("round",)``: A and B of the same round); the sweep's
    summary pairs each setting's lowest-over-rounds medians within a cell (``same=("cell",)``).
    """

    def key(r: dict, device: str) -> tuple:
        return (r["model"], device, r["horizon_ms"], *(r.get(c) for c in same))

    base = {key(r, r["device"]): r["us_per_forecast"] for r in rows if not r["compiled"]}
    for r in rows:
        ref = base.get(key(r, "cpu" if r["compiled"] else r["device"]))
        r["target_us"] = LATENCY_TARGET_US
        r["meets_target"] = float(r["us_per_forecast"] <= LATENCY_TARGET_US)
        r["speedup"] = float(ref / r["us_per_forecast"]) if ref is not None else float("nan")
        r["meets_speedup"] = float(r["speedup"] >= SPEEDUP_TARGET) if ref is not None else float("nan")


def _variants(p: dict, seed: int, devices: list[str]) -> list[tuple[dict, Callable[[], dict]]]:
    """Every timed variant of the cell, set up once (untimed): its row's fixed columns and a function that
    times it once (one round) and returns its timing columns."""
    out = []
    for horizon in p["horizons"]:
        ph = {
            **p,
            "horizon_ms": int(horizon),
            "max_seconds": min(float(p["max_seconds"]), 20.0),
            "max_epochs": min(int(p["max_epochs"]), 3),
        }
        s, ts = cell_session(ph, seed)
        train, val, test = cell_split(ph, ts)
        runways = [np.ascontiguousarray(test.runway[i]) for i in range(test.n_trials)]
        for name in p["models"]:
            if p["rank"] is not None and name not in TBFM_NAMES:
                continue  # baselines have no weight-map rank: timed in the full-rank cell
            model = _trained(name, p, ph, train, val, ts.n_channels, int(horizon), seed)
            meta = {
                "model": name,
                "device": "cpu",
                "n_channels": int(p["n_channels"]),
                "n_usable": int(ts.n_channels),
                "horizon_ms": int(horizon),
                "runway_ms": int(p["runway_ms"]),
                "n_bases": int(getattr(model, "n_bases", 0)),
                "rank": -1 if p["rank"] is None else int(p["rank"]),
                "threads": int(p["threads"]),
            }
            for compiled in p["compiled"]:
                if compiled and not isinstance(model, TBFM):
                    continue
                for device in devices:
                    if compiled and device != "cpu":
                        continue  # the compiled model is numpy: CPU only
                    m = {**meta, "compiled": bool(compiled), "device": device}
                    out += _timers(p, model, compiled, device, runways, m)
    return out


def _trained(name: str, p: dict, ph: dict, train, val, n_channels: int, horizon: int, seed: int):
    """Model ``name`` trained briefly on the CPU (rank-k TBFM models: a few alternating iterations)."""
    if name in TBFM_NAMES and p["rank"] is not None:
        torch.manual_seed(derive_seed(seed, 2))
        model = TBFM(
            n_channels,
            ph["runway_ms"],
            horizon,
            int(p["n_bases"]),
            rank=int(p["rank"]),
            state_agnostic=name == "tbfm_sham",
        )
        fit_tbfm(model, train, val, lam=float(p["lam"]), max_iters=5)
        return model
    # trained on the CPU; p["device"] here names the devices the forecasts are timed on
    model, _ = build_and_fit(name, train, val, {**ph, "tbfm_method": "alternating", "device": "cpu"}, seed)
    return model


def _timers(p: dict, model, compiled: bool, device: str, runways: list, meta: dict) -> list:
    """The (row columns, timer) pairs of one model variant: the forecast given the whole runway (with its
    weight map's floor when compiled) and, compiled with ``streaming``, the streamed forecast."""
    n, w, ipi = int(p["n_calls"]), int(p["warmup"]), int(p["ipi_ms"])
    empty = dict.fromkeys(("us_advance", "us_advance_p90", "us_read_floor", "us_bare_matvec", "map_mb"))
    comp = compile_tbfm(model, [ipi], lead=int(p["lead_ms"])) if compiled else None
    # a device other than the CPU times its own copy: the CPU variants keep the model where they time it
    on_device = model if device == "cpu" or comp is not None else copy.deepcopy(model)
    fn = forecast_fn(on_device, comp, ipi, int(p["lead_ms"]), device)

    def whole() -> dict:
        return {
            **empty,
            **time_forecasts(fn, runways, n, w),
            **(time_map_floor(comp, n, w) if comp is not None else {}),
        }

    out: list[tuple[dict, Callable[[], dict]]] = [({**meta, "streaming": False}, whole)]
    if comp is not None and p["streaming"]:
        stream = comp.stream(ipi)  # a ring of partial sums: each timed call streams one whole runway through it

        def streamed() -> dict:
            return {**empty, **time_streaming(stream, runways, n, w)}

        out.append(({**meta, "streaming": True}, streamed))
    return out
