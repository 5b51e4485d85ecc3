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
device            cpu        torch device the models train and forecast on (``cuda``, ``cuda:1``, ``mps``;
                             not ``latency``, whose ``device`` picks the devices it times)
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
model (see :func:`neuro_opt.tbfm.training.over_budget`); rows report both ``train_s`` (wall) and
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

import numpy as np
import pyarrow as pa

from neuro_opt.tbfm.base import resolve_device
from neuro_opt.tbfm.cell_setup import build_and_fit, cell_session, cell_split, derive_seed, model_rank, resolve_params
from neuro_opt.tbfm.control import demo_reference_tracking, demo_target_ranges
from neuro_opt.tbfm.fsam import fit_fsam
from neuro_opt.tbfm.latency import (
    forecast_fn,
    run_latency,  # noqa: F401 - a cell: sweeps.kinds.tbfm finds every run_<cell> here
    time_forecasts,
)
from neuro_opt.tbfm.metrics import evoked_baseline, forecast_report, r2_horizon
from neuro_opt.tbfm.multisession_cell import run_multisession  # noqa: F401 - a cell, like run_latency
from neuro_opt.threads import intra_op_threads


def run_sample_efficiency(params: dict, seed: int) -> pa.Table:
    """Train models on the first ``n_train`` trials of a simulated session; score them on the last ``n_test``.

    Extra params: ``models`` (default ``["tbfm"]``), ``horizons`` for R2 by horizon
    (default ``[10, 20, 40, 82, 164]``), ``latency`` (default False: also time
    batch-1 forecasts, ``latency_calls`` calls).

    Returns one row per model with columns: ``model, seed, n_channels, n_train, n_test, ipi_ms,
    n_bases, rank (-1 = full), train_s, train_cpu_s, n_iters, best_iter, val_r2, train_r2, test_r2,
    test_r2_beyond_evoked, test_r2_mean, state_dependent_r2, r2_h{h}`` per horizon, ``evoked_r2,
    evoked_r2_beyond_evoked``, and with ``latency`` also ``us_per_forecast``.

    ``test_r2`` is R2 over the horizon (SST around each channel's mean over trials and time), so it
    includes the average evoked response; ``test_r2_beyond_evoked`` takes SST around the test trials'
    mean at each time step instead (:func:`~neuro_opt.tbfm.metrics.r2_beyond_evoked`). ``evoked_r2`` and
    ``evoked_r2_beyond_evoked`` score the evoked-response predictor (the mean training response forecast
    for every test trial, :func:`~neuro_opt.tbfm.metrics.evoked_baseline`) the two ways: the same on every
    row of a cell, the context for the models' absolute R2.
    """
    p = resolve_params(
        params,
        {"models": ["tbfm"], "horizons": [10, 20, 40, 82, 164], "latency": False, "latency_calls": 300, "max_bases": 8},
    )
    resolve_device(p["device"])  # an unavailable device stops the cell before any work
    rows = []
    with intra_op_threads(p["threads"], blas=True):
        s, ts = cell_session(p, seed)
        train, val, test = cell_split(p, ts)
        evoked = evoked_baseline(train.target, test.target)
        for name in p["models"]:
            model, info = build_and_fit(name, train, val, p, seed)
            rep = forecast_report(model.predict(test), test.target, test.runway, horizons=p["horizons"])
            row = {
                "model": name,
                "seed": int(seed),
                "n_channels": int(p["n_channels"]),
                "n_usable": int(ts.n_channels),
                "n_train": int(p["n_train"]),
                "n_test": int(p["n_test"]),
                "ipi_ms": int(p["ipi_ms"]),
                "n_bases": int(info["n_bases"]),
                "rank": int(model_rank(name) or -1),
                "train_s": float(info["train_s"]),
                "train_cpu_s": float(info["train_cpu_s"]),
                "n_iters": int(info["n_iters"]),
                "best_iter": int(info["best_iter"]),
                "val_r2": float(info["val_r2"]),
                "train_r2": r2_horizon(model.predict(train), train.target),
                "test_r2": rep["r2"],
                "test_r2_beyond_evoked": rep["r2_beyond_evoked"],
                "test_r2_mean": rep["r2_mean"],
                "state_dependent_r2": rep["state_dependent_r2"],
                "evoked_r2": evoked["r2"],
                "evoked_r2_beyond_evoked": evoked["r2_beyond_evoked"],
            }
            row.update({k: v for k, v in rep.items() if k.startswith("r2_h")})
            if p["latency"]:
                fn = forecast_fn(model, None, int(p["ipi_ms"]), int(p["lead_ms"]), model.device)
                runways = [np.ascontiguousarray(test.runway[i]) for i in range(min(64, test.n_trials))]
                row["us_per_forecast"] = time_forecasts(fn, runways, int(p["latency_calls"]), 30)["us_per_forecast"]
            rows.append(row)
    return pa.Table.from_pylist(rows)


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
    p = resolve_params(params, {"max_bases": 8, "patience": 2, "min_delta": 1e-3, "hidden": 8})
    dev = resolve_device(p["device"])
    with intra_op_threads(p["threads"], blas=True):
        s, ts = cell_session(p, seed)
        train, val, test = cell_split(p, ts)
        r = fit_fsam(
            train,
            val,
            max_bases=int(p["max_bases"]),
            patience=int(p["patience"]),
            min_delta=float(p["min_delta"]),
            hidden=int(p["hidden"]),
            lam=float(p["lam"]),
            seed=derive_seed(seed, 4),
            test=test,
            device=dev,
        )
    rows = [
        {
            "seed": int(seed),
            "n_channels": int(p["n_channels"]),
            "n_usable": int(ts.n_channels),
            "n_train": int(p["n_train"]),
            "n_bases": int(c["n_bases"]),
            "val_r2": float(c["val_r2"]),
            "train_r2": float(c["train_r2"]),
            "test_r2": float(c["test_r2"]),
            "stage_s": float(c["train_s"]),
            "chosen": int(r.chosen),
            "is_chosen": bool(c["n_bases"] == r.chosen),
            "total_s": float(r.train_s),
        }
        for c in r.curve
    ]
    return pa.Table.from_pylist(rows)


def run_control(params: dict, seed: int) -> pa.Table:
    """The two closed-loop demonstrations with a TBFM trained on the session's early trials.

    Extra params: ``target_step`` (Demonstration 1's step, default ``lead_ms - 1``:
    just before pulse 1), ``n_mix`` (trajectories per reference, 3).

    Returns one row per demonstration (``target_ranges``, ``reference_tracking``): ``demo, seed,
    n_channels, n_train, n_test, auc, n_pos, n_neg, test_r2, knob, fpr, tpr`` (the last three are
    lists: the swept margin or threshold and the ROC points).
    """
    p = resolve_params(params, {"target_step": None, "n_mix": 3})
    resolve_device(p["device"])
    with intra_op_threads(p["threads"], blas=True):
        s, ts = cell_session(p, seed)
        train, val, test = cell_split(p, ts)
        model, _ = build_and_fit("tbfm", train, val, p, seed)
        forecast = model.predict(test)
        stim_ch = [int(np.nonzero(ts.channels == c)[0][0]) for c in s.stim_sites]
        rng = np.random.default_rng(derive_seed(seed, 5))
        step = int(p["lead_ms"]) - 1 if p["target_step"] is None else int(p["target_step"])
        rest = train.runway.reshape(-1, train.n_channels)
        d1 = demo_target_ranges(forecast, test.target, rest, stim_ch, step, rng)
        d2 = demo_reference_tracking(forecast, test.target, stim_ch, int(p["lead_ms"]), rng, n_mix=int(p["n_mix"]))
        r2 = r2_horizon(forecast, test.target)
    rows = [
        {
            "demo": name,
            "seed": int(seed),
            "n_channels": int(p["n_channels"]),
            "n_train": int(p["n_train"]),
            "n_test": int(p["n_test"]),
            "auc": float(d.auc),
            "n_pos": d.n_pos,
            "n_neg": d.n_neg,
            "test_r2": float(r2),
            "knob": d.knob.tolist(),
            "fpr": d.fpr.tolist(),
            "tpr": d.tpr.tolist(),
        }
        for name, d in (("target_ranges", d1), ("reference_tracking", d2))
    ]
    return pa.Table.from_pylist(rows)
