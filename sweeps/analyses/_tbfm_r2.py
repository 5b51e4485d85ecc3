"""The TBFM analyses' R2 context: each model's test R2 beside the evoked-response predictor's, both R2s.

``test_r2`` (R2 over the horizon, SST around each channel's mean over trials and time) credits a
forecast with the variance the average evoked response explains; the cells also log
``test_r2_beyond_evoked`` (SST around the test trials' mean at each time step, so the evoked response
itself scores 0) and the two R2s of the evoked-response predictor (the mean training response forecast
for every test trial: ``evoked_r2``, ``evoked_r2_beyond_evoked``), see :mod:`neuro_opt.tbfm.metrics`.
"""

from __future__ import annotations

import numpy as np

from sweeps.analyses import finding

COLUMNS = ("test_r2", "test_r2_beyond_evoked", "evoked_r2", "evoked_r2_beyond_evoked")
PUBLISHED = (
    "the paper reports R2 over the horizon (0.462 on test data for TBFM), which includes the average "
    "evoked response; it does not give the evoked response's own score"
)


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def r2_context(rows: list[dict], model: str = "tbfm", by: str | None = None) -> dict:
    """A finding: ``model``'s test R2 beyond the evoked response is above 0 on every replicate (seed), at
    every value of the ``by`` column (e.g. ``n_train``; None: all rows together).

    Its numbers give, per ``by`` value, the evoked-response predictor's two R2s and each model's two R2s
    (means over seeds) with ``beats_evoked``: the seeds on which the model's test R2 exceeds the predictor's.
    """
    text = (
        f"{'TBFM' if model == 'tbfm' else model} forecasts more than the average evoked response: its test R2 "
        f"beyond the evoked response is above 0{' at every ' + by if by else ''}"
    )
    rule = (
        f"test_r2_beyond_evoked of {model} > 0 on every replicate (seed){' at every ' + by if by else ''}; "
        "beside it, each model's test_r2 and the evoked-response predictor's (evoked_r2: the mean training "
        "response forecast for every test trial; evoked_r2_beyond_evoked <= 0 by construction)"
    )
    missing = sorted({c for r in rows for c in COLUMNS if r.get(c) is None})
    if not rows or missing:
        why = "no rows" if not rows else f"rows without {', '.join(missing)} (results logged before these columns)"
        return finding(text, PUBLISHED, None, rule=rule, reason=why)
    groups: dict = {}
    for r in rows:
        groups.setdefault(None if by is None else r[by], []).append(r)
    out, holds = [], True
    for key in sorted(groups, key=lambda k: (k is None, k)):
        rs = groups[key]
        evoked = {int(r["seed"]): r for r in rs}  # the predictor's score is the same on every row of a session
        models: dict = {}
        for r in rs:
            models.setdefault(r["model"], []).append(r)
        per_model = {
            name: {
                "test_r2": _mean([float(r["test_r2"]) for r in mr]),
                "test_r2_beyond_evoked": _mean([float(r["test_r2_beyond_evoked"]) for r in mr]),
                "n_seeds": len(mr),
                "beats_evoked": sum(float(r["test_r2"]) > float(r["evoked_r2"]) for r in mr),
            }
            for name, mr in sorted(models.items())
        }
        if model not in models:
            where = f" at {by}={key}" if by else ""
            return finding(text, PUBLISHED, None, rule=rule, reason=f"no {model} rows{where}")
        holds = holds and all(float(r["test_r2_beyond_evoked"]) > 0 for r in models[model])
        out.append(
            {
                **({by: key} if by else {}),
                "evoked_r2": _mean([float(r["evoked_r2"]) for r in evoked.values()]),
                "evoked_r2_beyond_evoked": _mean([float(r["evoked_r2_beyond_evoked"]) for r in evoked.values()]),
                "models": per_model,
            }
        )
    last = out[-1]
    m = last["models"][model]
    brief = (
        f"{'at ' + by + '=' + str(last[by]) + ': ' if by else ''}{model} test R2 {m['test_r2']:.2f}, "
        f"{m['test_r2_beyond_evoked']:.2f} beyond the evoked response; evoked-response predictor "
        f"{last['evoked_r2']:.2f}"
    )
    return finding(text, PUBLISHED, holds, brief=brief, rule=rule, model=model, groups=out)
