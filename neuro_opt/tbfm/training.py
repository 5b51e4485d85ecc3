"""What training a forecast model shares across models: the result record, the CPU-time budget,
validation scoring, early stopping, and loading solved weights (full or reduced rank).

Used by :func:`neuro_opt.tbfm.model.fit_tbfm`, the baselines (:mod:`neuro_opt.tbfm.baselines`)
and the multi-session fit (:mod:`neuro_opt.tbfm.multisession`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from neuro_opt.tbfm.base import ForecastModel
from neuro_opt.tbfm.data import TrialSet
from neuro_opt.tbfm.metrics import r2_horizon

if TYPE_CHECKING:
    from neuro_opt.tbfm.model import WeightEstimator


@dataclass
class FitResult:
    """Outcome of a training run.

    Attributes:
        method: training method. train_s: wall time (s). n_iters: epochs or
        alternations run. best_iter: the one restored. best_val_r2: its
        validation R2. history: per iteration ``(iter, train_loss, val_r2)``.
        train_cpu_s: CPU time of the process (s) spent training.
    """

    method: str
    train_s: float
    n_iters: int
    best_iter: int
    best_val_r2: float
    history: list = field(default_factory=list)
    train_cpu_s: float = float("nan")


def over_budget(c0: float, max_seconds: float | None) -> bool:
    """True once this process has used more than ``max_seconds`` of CPU time since ``c0`` (``time.process_time``).

    Training budgets count CPU time, not wall time, so that models compared under the same
    ``max_seconds`` get the same compute whatever else runs on a shared machine.
    """
    return bool(max_seconds) and time.process_time() - c0 > cast(float, max_seconds)  # not None: truthy


def validation_r2(model: ForecastModel, val: TrialSet) -> float:
    pred = model.predict(val)
    if not np.isfinite(pred).all():  # a diverging model scores worst instead of failing the fit
        return -np.inf
    return r2_horizon(pred, val.target[:, : model.horizon])


class EarlyStopper:
    state: dict[str, torch.Tensor] | None  # the best iteration's parameters

    def __init__(self, model: nn.Module, patience: int, min_delta: float = 1e-4):
        self.model, self.patience, self.min_delta = model, patience, min_delta
        self.best, self.best_iter, self.state, self.bad = -np.inf, -1, None, 0

    def update(self, it: int, score: float) -> bool:
        """Record a validation score; True when training should stop."""
        if not np.isfinite(score):
            score = -np.inf
        if score > self.best + self.min_delta or self.state is None:
            if score > self.best:
                self.best, self.best_iter = score, it
                self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.bad = 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def reduced_rank(W: torch.Tensor, g: torch.Tensor, Q: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-``k`` approximation of ``W`` (``C x B x RC``) in the metric of the runway covariance."""
    C, B, d = W.shape
    s = g.clamp_min(g.max() * 1e-10).sqrt()
    Y = (W.reshape(C * B, d) @ Q) * s  # fitted-value coordinates
    U, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    k = min(k, S.shape[0])
    Yk = (U[:, :k] * S[:k]) @ Vh[:k]
    return ((Yk / s) @ Q.T).reshape(C, B, d)


def set_weights(est: WeightEstimator, W: torch.Tensor, bias: torch.Tensor) -> None:
    """Load ``W`` (``B x C x RC``) and ``bias`` (``B x C``) into an estimator (factorizing if rank-limited)."""
    est.bias.copy_(bias.to(est.bias.dtype))
    if est.rank is None:
        est.weight.copy_(W.to(est.weight.dtype))
        return
    Wf = W.reshape(-1, W.shape[-1])
    U, S, Vh = torch.linalg.svd(Wf, full_matrices=False)
    k = est.rank
    r = min(k, S.shape[0])
    u = torch.zeros_like(est.U, dtype=Wf.dtype)
    v = torch.zeros_like(est.V, dtype=Wf.dtype)
    u[:, :r] = U[:, :r] * S[:r].sqrt()
    v[:r] = S[:r].sqrt()[:, None] * Vh[:r]
    est.U.copy_(u.to(est.U.dtype))
    est.V.copy_(v.to(est.V.dtype))
