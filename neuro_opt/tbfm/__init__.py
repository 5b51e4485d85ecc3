"""TBFM: temporal basis function models of state-dependent stimulation responses.

A notebook-friendly library (no ray, mlflow, hydra or optuna here)::

    from neuro_opt.tbfm import simulate_session, from_session, time_ordered_split, TBFM, fit_tbfm
    s = simulate_session(n_trials=3000, n_channels=32, ipi_ms=30, seed=0)
    train, val, test = time_ordered_split(from_session(s), n_train=2000)
    model = TBFM(train.n_channels)               # runway 20, horizon 164, 12 bases; device="cuda" for a GPU
    fit_tbfm(model, train, val)                   # closed-form ridge weights + AdamW bases
    pred = model.predict(test)                    # trials x horizon x channels
    compiled = compile_tbfm(model, ipis=[30])     # numpy linear model, no MLP
    compiled.predict_one(test.runway[0], 30)      # horizon x channels
    stream = compiled.stream(30)                  # the same forecast, sample by sample
    for sample in test.runway[0]:
        forecast = stream.push(sample)            # after the 20th sample: horizon x channels

Modules: ``simulator`` (synthetic LFP), ``data`` (windows, descriptors, split),
``model`` (TBFM, training), ``multisession`` (one basis generator shared by sessions, a weight
estimator each), ``fsam``, ``compile``, ``baselines`` (LSSM, AE-LSTM, sham-runway TBFM), ``metrics``,
``control`` (closed-loop demonstrations), ``cells`` (sweep cells returning Arrow tables; ``latency``
holds the latency cell and its timers, ``multisession_cell`` the multi-session one, ``cell_setup`` what
every cell sets up the same way).
"""

from neuro_opt.tbfm.baselines import AELSTM, LSSM, fit_baseline, state_agnostic_tbfm
from neuro_opt.tbfm.compile import CompiledTBFM, StreamingForecast, compile_tbfm
from neuro_opt.tbfm.control import demo_reference_tracking, demo_target_ranges, roc_auc
from neuro_opt.tbfm.data import (
    TrialSet,
    crop,
    from_session,
    stim_descriptor,
    time_ordered_split,
    window_trials,
    zscore_stats,
)
from neuro_opt.tbfm.fsam import AdditiveTBFM, fit_fsam
from neuro_opt.tbfm.metrics import (
    evoked_baseline,
    forecast_report,
    r2_beyond_evoked,
    r2_by_horizon,
    r2_horizon,
    r2_mean_response,
    r2_per_channel,
    state_dependent_r2,
)
from neuro_opt.tbfm.model import TBFM, FitResult, fit_tbfm
from neuro_opt.tbfm.multisession import MultiSessionTBFM, compile_session, fit_multisession
from neuro_opt.tbfm.simulator import LFPSession, find_unusable_channels, simulate_session

__all__ = [
    "AELSTM",
    "LSSM",
    "fit_baseline",
    "state_agnostic_tbfm",
    "CompiledTBFM",
    "StreamingForecast",
    "compile_tbfm",
    "demo_reference_tracking",
    "demo_target_ranges",
    "roc_auc",
    "TrialSet",
    "crop",
    "from_session",
    "stim_descriptor",
    "time_ordered_split",
    "window_trials",
    "zscore_stats",
    "AdditiveTBFM",
    "fit_fsam",
    "evoked_baseline",
    "forecast_report",
    "r2_beyond_evoked",
    "r2_by_horizon",
    "r2_horizon",
    "r2_mean_response",
    "r2_per_channel",
    "state_dependent_r2",
    "TBFM",
    "FitResult",
    "fit_tbfm",
    "MultiSessionTBFM",
    "compile_session",
    "fit_multisession",
    "LFPSession",
    "find_unusable_channels",
    "simulate_session",
]
