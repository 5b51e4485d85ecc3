"""The latency cell (:func:`run_latency`) and its timers: batch-1 and streamed forecasts, the weight map's floor."""

from __future__ import annotations

import time

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

    Extra params: ``models`` (default ``["tbfm"]``; ``lssm``, ``ae_lstm``,
    ``tbfm_sham`` allowed), ``compiled`` (default ``[False, True]``; compiled
    applies to TBFM models only), ``streaming`` (default True), ``horizons`` (default ``[40, 164]``),
    ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"`` = both when a GPU is present),
    ``rank`` (None: full weight map; k: rank-k TBFM), ``n_calls`` (1000),
    ``warmup`` (100). Defaults here use ``n_channels=94, n_session=500, n_train=300, n_test=100`` and
    ``sim={"bad_fraction": 0.0}`` (all 94 channels usable, as in the paper's 94-electrode benchmark).

    With ``rank`` set, only the TBFM models are run (the baselines have no weight map; they are
    timed in the full-rank cell).

    Returns one row per (model, compiled, streaming, device, horizon_ms): ``model, compiled, streaming,
    device, n_channels, n_usable, horizon_ms, runway_ms, n_bases, rank, threads, us_per_forecast`` (median),
    ``us_p10, us_p90, us_iqr, us_mean, us_advance, us_advance_p90`` (streaming rows; None otherwise),
    ``us_read_floor, us_bare_matvec, map_mb`` (compiled rows given the whole runway, see
    :func:`time_map_floor`; None otherwise), ``n_calls``, and the targets of the issue:
    ``target_us`` (100: compiled forecast <= 0.1 ms at 94 channels, horizon 164),
    ``meets_target`` (1.0 when ``us_per_forecast <= target_us``, else 0.0), ``speedup``
    (uncompiled median / this row's median for the same model, device and horizon; 1 for
    uncompiled rows) and ``meets_speedup`` (1.0 when ``speedup >= 1.5``).
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
        },
    )
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
    rows = []
    with intra_op_threads(p["threads"], blas=True):
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
                if p["rank"] is not None and name not in ("tbfm", "tbfm_adamw", "tbfm_sham"):
                    continue  # baselines have no weight-map rank: timed in the full-rank cell
                if name in ("tbfm", "tbfm_adamw", "tbfm_sham") and p["rank"] is not None:
                    torch.manual_seed(derive_seed(seed, 2))
                    model = TBFM(
                        ts.n_channels,
                        ph["runway_ms"],
                        int(horizon),
                        int(p["n_bases"]),
                        rank=int(p["rank"]),
                        state_agnostic=name == "tbfm_sham",
                    )
                    fit_tbfm(model, train, val, lam=float(p["lam"]), max_iters=5)
                else:
                    # trained on the CPU; p["device"] here names the devices the forecasts are timed on
                    model, _ = build_and_fit(
                        name, train, val, {**ph, "tbfm_method": "alternating", "device": "cpu"}, seed
                    )
                is_tbfm = isinstance(model, TBFM)
                for compiled in p["compiled"]:
                    if compiled and not is_tbfm:
                        continue
                    for device in devices:
                        if compiled and device != "cpu":
                            continue  # the compiled model is numpy: CPU only
                        comp = compile_tbfm(model, [int(p["ipi_ms"])], lead=int(p["lead_ms"])) if compiled else None
                        fn = forecast_fn(model, comp, int(p["ipi_ms"]), int(p["lead_ms"]), device)
                        timings = [
                            (
                                False,
                                {
                                    **time_forecasts(fn, runways, int(p["n_calls"]), int(p["warmup"])),
                                    **(time_map_floor(comp, int(p["n_calls"]), int(p["warmup"])) if compiled else {}),
                                },
                            )
                        ]
                        if comp is not None and p["streaming"]:
                            timings.append(
                                (
                                    True,
                                    time_streaming(
                                        comp.stream(int(p["ipi_ms"])), runways, int(p["n_calls"]), int(p["warmup"])
                                    ),
                                )
                            )
                        model.to("cpu")
                        for streaming, t in timings:
                            rows.append(
                                {
                                    "model": name,
                                    "compiled": bool(compiled),
                                    "streaming": streaming,
                                    "device": device,
                                    "n_channels": int(p["n_channels"]),
                                    "n_usable": int(ts.n_channels),
                                    "horizon_ms": int(horizon),
                                    "runway_ms": int(p["runway_ms"]),
                                    "n_bases": int(getattr(model, "n_bases", 0)),
                                    "rank": -1 if p["rank"] is None else int(p["rank"]),
                                    "threads": int(p["threads"]),
                                    "us_advance": None,
                                    "us_advance_p90": None,
                                    "us_read_floor": None,
                                    "us_bare_matvec": None,
                                    "map_mb": None,
                                    **t,
                                    "n_calls": int(p["n_calls"]),
                                }
                            )
    base = {(r["model"], r["device"], r["horizon_ms"]): r["us_per_forecast"] for r in rows if not r["compiled"]}
    for r in rows:
        ref = base.get((r["model"], "cpu" if r["compiled"] else r["device"], r["horizon_ms"]))
        r["target_us"] = LATENCY_TARGET_US
        r["meets_target"] = float(r["us_per_forecast"] <= LATENCY_TARGET_US)
        r["speedup"] = float(ref / r["us_per_forecast"]) if ref is not None else float("nan")
        r["meets_speedup"] = float(r["speedup"] >= SPEEDUP_TARGET) if ref is not None else float("nan")
    return pa.Table.from_pylist(rows)
