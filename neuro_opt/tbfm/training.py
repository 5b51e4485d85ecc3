"""What training a forecast model shares across models: the result record, the CPU-time budget,
validation scoring and early stopping.

Used by :func:`neuro_opt.tbfm.model.fit_tbfm`, the baselines (:mod:`neuro_opt.tbfm.baselines`)
and the multi-session fit (:mod:`neuro_opt.tbfm.multisession`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn

from neuro_opt.tbfm.base import ForecastModel
from neuro_opt.tbfm.data import TrialSet
from neuro_opt.tbfm.metrics import r2_horizon


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
