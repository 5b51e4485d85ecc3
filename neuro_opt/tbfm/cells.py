"""Sweep cells: plain functions ``run_<kind>(params: dict, seed: int) -> pyarrow.Table``.

The sweep launcher runs each inside a Ray task. Each is deterministic for a
given ``(params, seed)`` (timings aside), returns plain columns only, and uses
``params["threads"]`` torch threads (default 1), restoring the previous setting.

Common parameters (all optional; defaults are small so a cell runs in seconds):

================  =========  ==========================================================
key               default    meaning
================  =========  ==========================================================
n_channels        16         electrodes simulated (unusable ones are dropped: ~90 % kept)
n_session         1200       trials in the simulated session
n_test            300        test trials: the last ``n_test`` of the session
n_train           600        training trials: the first ``n_train`` (10 % of them validate)
ipi_ms            30         inter-pulse interval (10, 30 or 100)
runway_ms         20         runway; ``lead_ms`` (20) pulse-1 onset into the forecast
horizon_ms        164        forecast horizon
sim               {}         extra keyword arguments for ``simulate_session``
n_bases           12         TBFM bases
lam               1e-2       TBFM Frobenius penalty (alternating); ``lam_adamw`` 1e-4 for adamw
tbfm_method       alternating   ``alternating`` or ``adamw``
max_seconds       60         cap on each model's training in CPU seconds (early stopping may end it sooner)
max_epochs        200        epoch cap per baseline
ae_window         40         AE-LSTM training sub-window (forecast ms; the paper's 40)
ae_hidden         128        AE-LSTM hidden units (the paper does not give its size)
threads           1          torch threads inside the cell
================  =========  ==========================================================

Model names: ``tbfm``, ``tbfm_adamw`` (TBFM trained by joint AdamW), ``tbfm_sham``
(state-agnostic, sham runway), ``tbfm_fsam`` (basis count chosen by FSAM), ``tbfm_rank<k>``
(e.g. ``tbfm_rank64``: the TBFM with a rank-k affine weight map, trained like ``tbfm`` with the
reduced-rank ridge solution; it compiles to two thin products), ``lssm``, ``ae_lstm`` (trained on
the paper's sub-windows: 20 ms runway + ``ae_window`` = 40 ms forecast), ``ae_lstm_w<k>`` (the same
AE-LSTM trained on ``k`` ms forecast sub-windows, e.g. ``ae_lstm_w164``: the full horizon; the
window length that validation R2 prefers on the simulator, a departure from the paper's 40 ms),
``ae_lstm_h<k>`` (the paper's AE-LSTM with ``k`` LSTM hidden units instead of ``ae_hidden``; the two
suffixes combine: ``ae_lstm_w164_h128``).

Training budgets (``max_seconds``) count CPU seconds of the cell's process, the same for every
model (see :func:`neuro_opt.tbfm.model.over_budget`); rows report both ``train_s`` (wall) and
``train_cpu_s``.

Default-scale parameters live in the experiment files (``conf/exp/tbfm_*.yaml``); their run
times are in each launch's ``summary.json`` (``wall_s``), not here:

* sample efficiency: ``n_channels=32, n_session=6000, n_test=1000``, ``n_train`` in
  ``[300, 600, 1200, 2500, 5000]``;
* compare: ``n_channels=32, n_session=3000, n_train=2000, n_test=1000, max_seconds=300`` (the
  CPU-second budget lets the LSSM and AE-LSTM reach their validation plateau);
* fsam: ``n_channels=32, n_session=3000, n_train=2000, max_bases=15``;
* latency: the defaults of :func:`run_latency` (94 channels);
* control: ``n_channels=32, n_session=3000, n_train=2000, n_test=1000``.
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import pyarrow as pa
import torch

from neuro_opt.tbfm.baselines import AELSTM, LSSM, fit_baseline, state_agnostic_tbfm
from neuro_opt.tbfm.compile import compile_tbfm
from neuro_opt.tbfm.control import demo_reference_tracking, demo_target_ranges
from neuro_opt.tbfm.data import from_session, stim_descriptor, time_ordered_split
from neuro_opt.tbfm.fsam import fit_fsam
from neuro_opt.tbfm.metrics import forecast_report, r2_horizon
from neuro_opt.tbfm.model import TBFM, fit_tbfm
from neuro_opt.tbfm.simulator import simulate_session

#: The issue's latency targets: compiled forecast <= 100 us (94 channels, runway 20, horizon 164,
#: 12 bases) and compiled at least 1.5x faster than uncompiled.
LATENCY_TARGET_US = 100.0
SPEEDUP_TARGET = 1.5

MODELS = ("tbfm", "tbfm_adamw", "tbfm_sham", "tbfm_fsam", "lssm", "ae_lstm")

_DEFAULTS = dict(n_channels=16, n_session=1200, n_test=300, n_train=600, ipi_ms=30, runway_ms=20, lead_ms=20,
                 horizon_ms=164, sim={}, n_bases=12, lam=1e-2, tbfm_method="alternating", max_seconds=60.0,
                 max_epochs=200, threads=1, val_fraction=0.1, lam_adamw=1e-4, ae_window=40,
                 ae_hidden=128)


def _params(params: dict | None, extra: dict) -> dict:
    p = {**_DEFAULTS, **extra}
    for k, v in (params or {}).items():
        if k not in p:
            raise ValueError(f"unknown parameter {k!r}; known: {', '.join(sorted(p))}")
        p[k] = v
    return p


@contextlib.contextmanager
def _threads(n: int):
    """Limit torch and BLAS (numpy) threads to ``n`` inside the block, then restore them.

    Oversubscribed BLAS threads on a loaded machine make a 100 us product take milliseconds,
    so the latency cell must control both pools.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits  # installed with botorch
        blas = threadpool_limits(limits=int(n))
    except ImportError:  # pragma: no cover - threadpoolctl comes with botorch
        blas = contextlib.nullcontext()
    try:
        with blas:
            yield
    finally:
        torch.set_num_threads(old)


def _seed(seed: int, *salt: int) -> int:
    """A 31-bit seed derived from (seed, salt) with numpy SeedSequence."""
    return int(np.random.SeedSequence([int(seed), *salt]).generate_state(1)[0] & 0x7FFFFFFF)


def _session(p: dict, seed: int, return_components: bool = False):
    s = simulate_session(n_trials=int(p["n_session"]), n_channels=int(p["n_channels"]), ipi_ms=int(p["ipi_ms"]),
                         seed=_seed(seed, 1), return_components=return_components, **dict(p["sim"]))
    ts = from_session(s, runway_ms=int(p["runway_ms"]), lead_ms=int(p["lead_ms"]), horizon_ms=int(p["horizon_ms"]))
    return s, ts


def _split(p: dict, ts):
    n_train, n_test = int(p["n_train"]), int(p["n_test"])
    if n_train + n_test > ts.n_trials:
        raise ValueError(f"n_train ({n_train}) + n_test ({n_test}) exceeds the {ts.n_trials} stimulated trials of the "
                         f"session; raise n_session")
    return time_ordered_split(ts, n_train, n_test=n_test, val_fraction=float(p["val_fraction"]))


def model_rank(name: str) -> int | None:
    """The weight-map rank of a ``tbfm_rank<k>`` model name, else None."""
    m = re.fullmatch(r"tbfm_rank(\d+)", name)
    return int(m.group(1)) if m else None


def ae_variant(name: str) -> dict | None:
    """The AE-LSTM settings an ``ae_lstm_w<k>``, ``ae_lstm_h<k>`` or ``ae_lstm_w<k>_h<k>`` name sets, else None.

    Returns ``{"window": k or None, "hidden": k or None}`` (None: the cell's ``ae_window`` / ``ae_hidden``).
    """
    m = re.fullmatch(r"ae_lstm(?:_w(\d+))?(?:_h(\d+))?", name)
    if not m or name == "ae_lstm":
        return None
    return {"window": None if m.group(1) is None else int(m.group(1)),
            "hidden": None if m.group(2) is None else int(m.group(2))}


def build_and_fit(name: str, train, val, p: dict, seed: int):
    """Build model ``name`` (see :data:`MODELS`, ``tbfm_rank<k>`` or :func:`ae_variant`) with cell parameters
    ``p`` and train it.

    Returns ``(model, info)`` with ``info`` holding ``train_s, train_cpu_s, n_iters, best_iter, val_r2, n_bases``.
    """
    rank, variant = model_rank(name), ae_variant(name)
    # a rank-k TBFM starts from the full-rank TBFM's initialization, an AE-LSTM variant from the AE-LSTM's (paired)
    base = "tbfm" if rank else "ae_lstm" if variant else name
    torch.manual_seed(_seed(seed, 2, MODELS.index(base) if base in MODELS else 99))
    C, R, H = train.n_channels, int(p["runway_ms"]), int(p["horizon_ms"])
    ms = float(p["max_seconds"])
    if name in ("tbfm", "tbfm_adamw", "tbfm_sham") or rank:
        model = (state_agnostic_tbfm(C, R, H, int(p["n_bases"])) if name == "tbfm_sham"
                 else TBFM(C, R, H, int(p["n_bases"]), rank=rank))
        method = "adamw" if name == "tbfm_adamw" else p["tbfm_method"]
        lam = float(p["lam"]) if method == "alternating" else float(p["lam_adamw"])
        r = fit_tbfm(model, train, val, method=method, lam=lam, max_seconds=ms, seed=_seed(seed, 3))
        return model, {"train_s": r.train_s, "train_cpu_s": r.train_cpu_s, "n_iters": r.n_iters,
                       "best_iter": r.best_iter, "val_r2": r.best_val_r2, "n_bases": model.n_bases}
    if name == "tbfm_fsam":
        r = fit_fsam(train, val, max_bases=int(p.get("max_bases", p["n_bases"])), lam=float(p["lam"]),
                     seed=_seed(seed, 4))
        return r.model, {"train_s": r.train_s, "train_cpu_s": float("nan"), "n_iters": len(r.curve),
                         "best_iter": r.chosen,
                         "val_r2": max(c["val_r2"] for c in r.curve), "n_bases": r.chosen}
    if name in ("lssm", "ae_lstm") or variant:
        v = variant or {}
        model = LSSM(C, R, H) if name == "lssm" else AELSTM(C, R, H, window=v.get("window") or int(p["ae_window"]),
                                                            hidden=v.get("hidden") or int(p["ae_hidden"]))
        # same optimizer (AdamW, lr halved on validation plateaus), budget and early stopping rule for both;
        # the AE-LSTM's noisier full-horizon validation curve gets a longer patience
        r = fit_baseline(model, train, val, lr=2e-3, max_epochs=int(p["max_epochs"]), lr_patience=4,
                         patience=15 if name == "lssm" else 30, max_seconds=ms, seed=_seed(seed, 3))
        return model, {"train_s": r.train_s, "train_cpu_s": r.train_cpu_s, "n_iters": r.n_iters,
                       "best_iter": r.best_iter, "val_r2": r.best_val_r2, "n_bases": 0}
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}, tbfm_rank<k>, ae_lstm_w<k>, "
                     f"ae_lstm_h<k> or ae_lstm_w<k>_h<k>")


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
    return {"us_per_forecast": float(q50), "us_p10": float(q10), "us_p90": float(q90), "us_iqr": float(q75 - q25),
            "us_mean": float(t.mean())}


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
    return {**_us_stats(t[:, 0]), "us_advance": float(np.median(t[:, 1])),
            "us_advance_p90": float(np.percentile(t[:, 1], 90))}


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
    return {"us_read_floor": read["us_per_forecast"], "us_bare_matvec": mv["us_per_forecast"],
            "map_mb": float(sum(m.nbytes for m in mats) / 1e6)}


def _forecast_fn(model, compiled, ipi: int, lead: int, device: str):
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


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def run_sample_efficiency(params: dict, seed: int) -> pa.Table:
    """Train models on the first ``n_train`` trials of a simulated session; score them on the last ``n_test``.

    Extra params: ``models`` (default ``["tbfm"]``), ``horizons`` for R2 by horizon
    (default ``[10, 20, 40, 82, 164]``), ``latency`` (default False: also time
    batch-1 forecasts, ``latency_calls`` calls).

    Returns one row per model with columns: ``model, seed, n_channels, n_train, n_test, ipi_ms,
    n_bases, rank (-1 = full), train_s, train_cpu_s, n_iters, best_iter, val_r2, train_r2, test_r2, test_r2_mean,
    state_dependent_r2, r2_h{h}`` per horizon, and with ``latency`` also ``us_per_forecast``.
    """
    p = _params(params, {"models": ["tbfm"], "horizons": [10, 20, 40, 82, 164], "latency": False,
                         "latency_calls": 300, "max_bases": 8})
    rows = []
    with _threads(p["threads"]):
        s, ts = _session(p, seed)
        train, val, test = _split(p, ts)
        for name in p["models"]:
            model, info = build_and_fit(name, train, val, p, seed)
            rep = forecast_report(model.predict(test), test.target, test.runway, horizons=p["horizons"])
            row = {"model": name, "seed": int(seed), "n_channels": int(p["n_channels"]),
                   "n_usable": int(ts.n_channels), "n_train": int(p["n_train"]), "n_test": int(p["n_test"]),
                   "ipi_ms": int(p["ipi_ms"]), "n_bases": int(info["n_bases"]),
                   "rank": int(model_rank(name) or -1), "train_s": float(info["train_s"]),
                   "train_cpu_s": float(info["train_cpu_s"]),
                   "n_iters": int(info["n_iters"]), "best_iter": int(info["best_iter"]),
                   "val_r2": float(info["val_r2"]),
                   "train_r2": r2_horizon(model.predict(train), train.target),
                   "test_r2": rep["r2"], "test_r2_mean": rep["r2_mean"],
                   "state_dependent_r2": rep["state_dependent_r2"]}
            row.update({k: v for k, v in rep.items() if k.startswith("r2_h")})
            if p["latency"]:
                fn = _forecast_fn(model, None, int(p["ipi_ms"]), int(p["lead_ms"]), "cpu")
                runways = [np.ascontiguousarray(test.runway[i]) for i in range(min(64, test.n_trials))]
                row["us_per_forecast"] = time_forecasts(fn, runways, int(p["latency_calls"]), 30)["us_per_forecast"]
            rows.append(row)
    return _table(rows)


def run_compare(params: dict, seed: int) -> pa.Table:
    """TBFM vs LSSM vs AE-LSTM vs state-agnostic TBFM on one session.

    Same as :func:`run_sample_efficiency` with ``models`` defaulting to
    ``["tbfm", "tbfm_rank64", "tbfm_sham", "lssm", "ae_lstm"]`` and ``latency=True`` (adds ``us_per_forecast``).
    """
    p = dict(params or {})
    p.setdefault("models", ["tbfm", "tbfm_rank64", "tbfm_sham", "lssm", "ae_lstm"])
    p.setdefault("latency", True)
    return run_sample_efficiency(p, seed)


def run_fsam(params: dict, seed: int) -> pa.Table:
    """FSAM: R2 vs basis count, and the chosen count.

    Extra params: ``max_bases`` (default 8; the paper went to 15), ``patience``
    (stages without gain before stopping, default 2), ``min_delta`` (1e-3), ``hidden`` (8).

    Returns one row per stage: ``seed, n_channels, n_train, n_bases, val_r2, train_r2, test_r2,
    stage_s, chosen`` (the chosen count, the same on every row), ``is_chosen``, ``total_s``.
    """
    p = _params(params, {"max_bases": 8, "patience": 2, "min_delta": 1e-3, "hidden": 8})
    with _threads(p["threads"]):
        s, ts = _session(p, seed)
        train, val, test = _split(p, ts)
        r = fit_fsam(train, val, max_bases=int(p["max_bases"]), patience=int(p["patience"]),
                     min_delta=float(p["min_delta"]), hidden=int(p["hidden"]), lam=float(p["lam"]),
                     seed=_seed(seed, 4), test=test)
    return _table([{"seed": int(seed), "n_channels": int(p["n_channels"]), "n_usable": int(ts.n_channels),
                    "n_train": int(p["n_train"]), "n_bases": int(c["n_bases"]), "val_r2": float(c["val_r2"]),
                    "train_r2": float(c["train_r2"]), "test_r2": float(c["test_r2"]), "stage_s": float(c["train_s"]),
                    "chosen": int(r.chosen), "is_chosen": bool(c["n_bases"] == r.chosen), "total_s": float(r.train_s)}
                   for c in r.curve])


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
    p = _params(params, {"models": ["tbfm"], "compiled": [False, True], "streaming": True, "horizons": [40, 164],
                         "device": "cpu", "rank": None, "n_calls": 1000, "warmup": 100})
    for k, v in {"n_channels": 94, "n_session": 500, "n_train": 300, "n_test": 100,
                 "sim": {"bad_fraction": 0.0}}.items():  # every simulated channel usable: C = n_channels
        if k not in (params or {}):
            p[k] = v
    devices = ["cpu"] if p["device"] == "cpu" else ["cuda"] if p["device"] == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch sees no GPU")
    rows = []
    with _threads(p["threads"]):
        for horizon in p["horizons"]:
            ph = {**p, "horizon_ms": int(horizon), "max_seconds": min(float(p["max_seconds"]), 20.0),
                  "max_epochs": min(int(p["max_epochs"]), 3)}
            s, ts = _session(ph, seed)
            train, val, test = _split(ph, ts)
            runways = [np.ascontiguousarray(test.runway[i]) for i in range(test.n_trials)]
            for name in p["models"]:
                if p["rank"] is not None and name not in ("tbfm", "tbfm_adamw", "tbfm_sham"):
                    continue  # baselines have no weight-map rank: timed in the full-rank cell
                if name in ("tbfm", "tbfm_adamw", "tbfm_sham") and p["rank"] is not None:
                    torch.manual_seed(_seed(seed, 2))
                    model = TBFM(ts.n_channels, ph["runway_ms"], int(horizon), int(p["n_bases"]), rank=int(p["rank"]),
                                 state_agnostic=name == "tbfm_sham")
                    fit_tbfm(model, train, val, lam=float(p["lam"]), max_iters=5)
                else:
                    model, _ = build_and_fit(name, train, val, {**ph, "tbfm_method": "alternating"}, seed)
                is_tbfm = isinstance(model, TBFM)
                for compiled in p["compiled"]:
                    if compiled and not is_tbfm:
                        continue
                    for device in devices:
                        if compiled and device != "cpu":
                            continue  # the compiled model is numpy: CPU only
                        comp = compile_tbfm(model, [int(p["ipi_ms"])], lead=int(p["lead_ms"])) if compiled else None
                        fn = _forecast_fn(model, comp, int(p["ipi_ms"]), int(p["lead_ms"]), device)
                        timings = [(False, {**time_forecasts(fn, runways, int(p["n_calls"]), int(p["warmup"])),
                                            **(time_map_floor(comp, int(p["n_calls"]), int(p["warmup"]))
                                               if compiled else {})})]
                        if compiled and p["streaming"]:
                            timings.append((True, time_streaming(comp.stream(int(p["ipi_ms"])), runways,
                                                                 int(p["n_calls"]), int(p["warmup"]))))
                        model.to("cpu")
                        for streaming, t in timings:
                            rows.append({"model": name, "compiled": bool(compiled), "streaming": streaming,
                                         "device": device, "n_channels": int(p["n_channels"]),
                                         "n_usable": int(ts.n_channels), "horizon_ms": int(horizon),
                                         "runway_ms": int(p["runway_ms"]), "n_bases": int(getattr(model, "n_bases", 0)),
                                         "rank": -1 if p["rank"] is None else int(p["rank"]),
                                         "threads": int(p["threads"]), "us_advance": None, "us_advance_p90": None,
                                         "us_read_floor": None, "us_bare_matvec": None, "map_mb": None,
                                         **t, "n_calls": int(p["n_calls"])})
    base = {(r["model"], r["device"], r["horizon_ms"]): r["us_per_forecast"] for r in rows if not r["compiled"]}
    for r in rows:
        ref = base.get((r["model"], "cpu" if r["compiled"] else r["device"], r["horizon_ms"]))
        r["target_us"] = LATENCY_TARGET_US
        r["meets_target"] = float(r["us_per_forecast"] <= LATENCY_TARGET_US)
        r["speedup"] = float(ref / r["us_per_forecast"]) if ref is not None else float("nan")
        r["meets_speedup"] = float(r["speedup"] >= SPEEDUP_TARGET) if ref is not None else float("nan")
    return _table(rows)


def run_control(params: dict, seed: int) -> pa.Table:
    """The two closed-loop demonstrations with a TBFM trained on the session's early trials.

    Extra params: ``target_step`` (Demonstration 1's step, default ``lead_ms - 1``:
    just before pulse 1), ``n_mix`` (trajectories per reference, 3).

    Returns one row per demonstration (``target_ranges``, ``reference_tracking``): ``demo, seed,
    n_channels, n_train, n_test, auc, n_pos, n_neg, test_r2, knob, fpr, tpr`` (the last three are
    lists: the swept margin or threshold and the ROC points).
    """
    p = _params(params, {"target_step": None, "n_mix": 3})
    with _threads(p["threads"]):
        s, ts = _session(p, seed)
        train, val, test = _split(p, ts)
        model, _ = build_and_fit("tbfm", train, val, p, seed)
        forecast = model.predict(test)
        stim_ch = [int(np.nonzero(ts.channels == c)[0][0]) for c in s.stim_sites]
        rng = np.random.default_rng(_seed(seed, 5))
        step = int(p["lead_ms"]) - 1 if p["target_step"] is None else int(p["target_step"])
        rest = train.runway.reshape(-1, train.n_channels)
        d1 = demo_target_ranges(forecast, test.target, rest, stim_ch, step, rng)
        d2 = demo_reference_tracking(forecast, test.target, stim_ch, int(p["lead_ms"]), rng, n_mix=int(p["n_mix"]))
        r2 = r2_horizon(forecast, test.target)
    return _table([{"demo": name, "seed": int(seed), "n_channels": int(p["n_channels"]), "n_train": int(p["n_train"]),
                    "n_test": int(p["n_test"]), "auc": float(d.auc), "n_pos": d.n_pos, "n_neg": d.n_neg,
                    "test_r2": float(r2), "knob": d.knob.tolist(), "fpr": d.fpr.tolist(), "tpr": d.tpr.tolist()}
                   for name, d in (("target_ranges", d1), ("reference_tracking", d2))])
