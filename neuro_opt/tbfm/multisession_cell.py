"""The multi-session sweep cell (seed 004, Section 4.4): a shared basis generator vs per-session TBFMs.

:func:`run_multisession` simulates one session per entry of ``params["sessions"]`` (each its own
inter-pulse interval, seed, stimulation sites and unusable channels), trains on the first
``n_train`` trials of every session (the same count per session) and scores on each session's last
``n_test``:

* ``tbfm_multi``: one :class:`~neuro_opt.tbfm.multisession.MultiSessionTBFM` trained jointly on all
  sessions (shared basis generator, a weight estimator per session);
* ``tbfm``: a single-session TBFM per session, trained on that session only, with the same basis
  count, generator architecture, penalty and training method.

Each model's forecast is also compiled (:func:`~neuro_opt.tbfm.compile.compile_tbfm`, per session
for the multi-session model) and checked against the eager one on the test set.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from neuro_opt.tbfm.cell_setup import derive_seed, resolve_params
from neuro_opt.tbfm.compile import compile_tbfm
from neuro_opt.tbfm.data import TrialSet, from_session, time_ordered_split
from neuro_opt.tbfm.metrics import forecast_report, r2_horizon
from neuro_opt.tbfm.model import TBFM, FitResult, fit_tbfm
from neuro_opt.tbfm.multisession import MultiSessionTBFM, compile_session, fit_multisession
from neuro_opt.tbfm.simulator import simulate_session
from neuro_opt.threads import intra_op_threads

#: Three sessions as in Section 4.4: intervals 10, 30 and 100 ms, different numbers of usable channels.
DEFAULT_SESSIONS = [
    {"ipi_ms": 10, "bad_fraction": 0.1},
    {"ipi_ms": 30, "bad_fraction": 0.2},
    {"ipi_ms": 100, "bad_fraction": 0.3},
]
#: The cell's own parameters (beside :data:`~neuro_opt.tbfm.cell_setup.DEFAULTS`).
EXTRA = {"sessions": DEFAULT_SESSIONS, "hidden": 16, "depth": 2, "horizons": [20, 82, 164]}


def session_specs(p: dict) -> list[dict]:
    """Each session's ``simulate_session`` arguments: ``n_channels`` and ``sim`` of the cell, overridden by
    the session's entry (which must give ``ipi_ms``)."""
    sessions = p["sessions"]
    if not isinstance(sessions, (list, tuple)) or not sessions:
        raise ValueError(f"sessions must be a non-empty list of {{ipi_ms: ..., ...}} entries, got {sessions!r}")
    specs = []
    for i, entry in enumerate(sessions):
        if not isinstance(entry, dict) or "ipi_ms" not in entry:
            raise ValueError(f"sessions[{i}] must be a mapping with ipi_ms (10, 30 or 100), got {entry!r}")
        specs.append({"n_channels": int(p["n_channels"]), **dict(p["sim"]), **dict(entry)})
    return specs


def _splits(p: dict, seed: int) -> list[tuple[TrialSet, TrialSet, TrialSet]]:
    n_train, n_test = int(p["n_train"]), int(p["n_test"])
    out = []
    for i, spec in enumerate(session_specs(p)):
        s = simulate_session(n_trials=int(p["n_session"]), seed=derive_seed(seed, 1, i), **spec)
        ts = from_session(s, runway_ms=int(p["runway_ms"]), lead_ms=int(p["lead_ms"]), horizon_ms=int(p["horizon_ms"]))
        if n_train + n_test > ts.n_trials:
            raise ValueError(
                f"session {i}: n_train ({n_train}) + n_test ({n_test}) exceeds its {ts.n_trials} stimulated trials; "
                f"raise n_session"
            )
        out.append(time_ordered_split(ts, n_train, n_test=n_test, val_fraction=float(p["val_fraction"])))
    return out


def _compile_error(model: TBFM, compiled, test: TrialSet, ipi: int) -> float:
    """Largest absolute difference between the compiled and the eager forecast on ``test`` (raw units)."""
    eager = model.predict(test)
    runway = np.ascontiguousarray(test.runway[:, test.runway_len - model.runway :], dtype=np.float32)
    return float(np.abs(compiled.predict(runway, ipi) - eager).max())


def _row(name, s, split, model: TBFM, fit: FitResult, p, seed, compile_err) -> dict:
    train, val, test = split
    rep = forecast_report(model.predict(test), test.target, test.runway, horizons=p["horizons"])
    row = {
        "model": name,
        "seed": int(seed),
        "session": int(s),
        "ipi_ms": int(train.ipi_ms[0]),
        "n_channels": int(session_specs(p)[s]["n_channels"]),
        "n_usable": int(train.n_channels),
        "usable": [int(c) for c in train.channels],
        "n_train": int(p["n_train"]),
        "n_test": int(p["n_test"]),
        "n_bases": int(model.n_bases),
        "train_s": float(fit.train_s),
        "train_cpu_s": float(fit.train_cpu_s),
        "n_iters": int(fit.n_iters),
        "best_iter": int(fit.best_iter),
        "val_r2": r2_horizon(model.predict(val), val.target),
        "train_r2": r2_horizon(model.predict(train), train.target),
        "test_r2": rep["r2"],
        "test_r2_mean": rep["r2_mean"],
        "state_dependent_r2": rep["state_dependent_r2"],
        "compile_max_err": compile_err,
    }
    row.update({k: v for k, v in rep.items() if k.startswith("r2_h")})
    return row


def run_multisession(params: dict, seed: int) -> pa.Table:
    """Multi-session TBFM vs per-session TBFMs on each session's test set.

    Extra params: ``sessions`` (a list, one entry per session: ``ipi_ms`` and optional ``n_channels`` and
    ``simulate_session`` arguments such as ``bad_fraction``; default :data:`DEFAULT_SESSIONS`), ``hidden``
    and ``depth`` (the basis generator's MLP, both models), ``horizons`` (R2 over the first ``h`` steps).
    ``n_train`` is the training trials of each session (10 % validate).

    Returns one row per model and session: ``model`` (``tbfm_multi`` or ``tbfm``), ``seed, session, ipi_ms,
    n_channels, n_usable, usable`` (the usable channel indices), ``n_train, n_test, n_bases, train_s,
    train_cpu_s, n_iters, best_iter`` (the multi-session rows repeat the joint fit's, which trains every
    session), ``val_r2, train_r2, test_r2, test_r2_mean, state_dependent_r2, r2_h{h}`` and
    ``compile_max_err`` (largest |compiled - eager| test forecast, raw units).
    """
    p = resolve_params(params, EXTRA)
    R, H, B = int(p["runway_ms"]), int(p["horizon_ms"]), int(p["n_bases"])
    hidden, depth, lam, ms = int(p["hidden"]), int(p["depth"]), float(p["lam"]), float(p["max_seconds"])
    if p["tbfm_method"] != "alternating":
        raise ValueError(f"tbfm_method={p['tbfm_method']!r}: the multi-session fit is alternating only")
    if str(p["device"]) != "cpu":
        raise ValueError(f"device={p['device']!r}: the multi-session cell trains on the CPU only (device='cpu')")
    # the first optimizer of a process imports torch._dynamo (seconds of CPU): done here, outside every
    # model's CPU budget, so the joint fit (trained first) and the per-session fits get the same budget
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    rows = []
    with intra_op_threads(p["threads"], blas=True):
        splits = _splits(p, seed)
        ipis = [int(sp[0].ipi_ms[0]) for sp in splits]
        torch.manual_seed(derive_seed(seed, 2, 99))
        multi = MultiSessionTBFM([sp[0].n_channels for sp in splits], R, H, B, hidden=hidden, depth=depth)
        fit = fit_multisession(multi, [sp[0] for sp in splits], [sp[1] for sp in splits], lam=lam, max_seconds=ms)
        for s, sp in enumerate(splits):
            err = _compile_error(multi.session(s), compile_session(multi, s, ipis=[ipis[s]]), sp[2], ipis[s])
            rows.append(_row("tbfm_multi", s, sp, multi.session(s), fit, p, seed, err))
        for s, sp in enumerate(splits):
            torch.manual_seed(derive_seed(seed, 2, s))
            single = TBFM(sp[0].n_channels, R, H, B, hidden=hidden, depth=depth)
            fit_s = fit_tbfm(single, sp[0], sp[1], lam=lam, max_seconds=ms, seed=derive_seed(seed, 3, s))
            err = _compile_error(single, compile_tbfm(single, ipis=[ipis[s]]), sp[2], ipis[s])
            rows.append(_row("tbfm", s, sp, single, fit_s, p, seed, err))
    return pa.Table.from_pylist(rows)
