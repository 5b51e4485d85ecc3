"""Forward stagewise additive modeling (FSAM) of TBFM bases.

The basis generator becomes a list of sub-networks, one per basis. Stage ``k``
adds sub-network ``k`` and trains it together with *all* weight-estimator
parameters (earlier weights are not frozen; earlier sub-networks are). Bases
are added until the validation R2 stops improving (by ``min_delta`` for
``patience`` stages) or ``max_bases`` is reached; the curve of R2 vs basis
count is returned, and the chosen count is the fewest bases whose validation R2
is within ``min_delta`` of the best.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from neuro_opt.tbfm.data import STIM_DIM, TrialSet, zscore_stats
from neuro_opt.tbfm.metrics import r2_horizon
from neuro_opt.tbfm.model import TBFM, BasisGenerator, WeightEstimator, fit_tbfm


class AdditiveBasisGenerator(nn.Module):
    """One single-basis MLP per basis. ``forward(stim)``: ``K x H x S`` -> ``K x B x H`` (B = sub-networks so far)."""

    def __init__(self, horizon: int, stim_dim: int = STIM_DIM, hidden: int = 8, depth: int = 2):
        super().__init__()
        self.horizon, self.stim_dim, self.hidden, self.depth = horizon, stim_dim, hidden, depth
        self.subnets = nn.ModuleList()

    @property
    def n_bases(self) -> int:
        return len(self.subnets)

    def add_basis(self) -> BasisGenerator:
        net = BasisGenerator(self.horizon, 1, self.stim_dim, self.hidden, self.depth)
        self.subnets.append(net)
        return net

    def forward(self, stim: torch.Tensor) -> torch.Tensor:
        if not self.subnets:
            raise RuntimeError("the additive generator has no bases yet; call add_basis()")
        return torch.cat([net(stim) for net in self.subnets], dim=1)

    @torch.no_grad()
    def normalize_(self, stim: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.normalize_(stim) for net in self.subnets])


class AdditiveTBFM(TBFM):
    """A TBFM whose bases come from an :class:`AdditiveBasisGenerator`; starts with zero bases."""

    def __init__(
        self,
        n_channels: int,
        runway: int = 20,
        horizon: int = 164,
        *,
        hidden: int = 8,
        depth: int = 2,
        state_agnostic: bool = False,
        stim_dim: int = STIM_DIM,
        device: str | torch.device = "cpu",
    ):
        self._sub_hidden, self._sub_depth = hidden, depth
        super().__init__(
            n_channels,
            runway,
            horizon,
            n_bases=1,
            hidden=hidden,
            depth=depth,
            state_agnostic=state_agnostic,
            stim_dim=stim_dim,
            device=device,
        )
        self.n_bases = 0
        self.estimator = WeightEstimator(n_channels, runway, 0).float().to(self.device)

    def _make_generator(self, horizon, n_bases, stim_dim, hidden, depth) -> nn.Module:
        return AdditiveBasisGenerator(horizon, stim_dim, hidden, depth)

    def add_basis(self) -> BasisGenerator:
        """Add one basis: a new sub-network and a zero-initialized weight slice (earlier weights kept)."""
        net = self.generator.add_basis().float().to(self.device)
        old = self.estimator
        new = WeightEstimator(self.n_channels, self.runway, old.n_bases + 1).float().to(self.device)
        with torch.no_grad():
            new.weight[: old.n_bases] = old.weight
            new.bias[: old.n_bases] = old.bias
        self.estimator = new
        self.n_bases = new.n_bases
        return net


@dataclass
class FSAMResult:
    """FSAM outcome.

    Attributes:
        model: the model with ``chosen`` bases (trained), or with all stages if ``keep_all``.
        curve: one dict per stage: ``n_bases``, ``val_r2``, ``train_r2``, ``train_s`` (and ``test_r2``).
        chosen: the fewest bases whose validation R2 is within ``min_delta`` of the best.
        train_s: total wall time.
    """

    model: AdditiveTBFM
    curve: list = field(default_factory=list)
    chosen: int = 0
    train_s: float = 0.0


def fit_fsam(
    train: TrialSet,
    val: TrialSet,
    *,
    max_bases: int = 15,
    patience: int = 2,
    min_delta: float = 1e-3,
    hidden: int = 8,
    depth: int = 2,
    method: str = "alternating",
    lam: float = 1e-2,
    max_iters: int | None = None,
    stage_patience: int | None = None,
    seed: int = 0,
    keep_all: bool = False,
    runway: int | None = None,
    horizon: int | None = None,
    test: TrialSet | None = None,
    device: str | torch.device = "cpu",
) -> FSAMResult:
    """Grow a TBFM one basis at a time.

    Args:
        train, val: time-ordered trial sets.
        max_bases: upper bound on stages.
        patience: stages without a validation gain > ``min_delta`` before stopping.
        hidden, depth: each sub-network's MLP.
        method, lam, max_iters, stage_patience: training of each stage (see
            :func:`~neuro_opt.tbfm.model.fit_tbfm`; ``stage_patience`` is its ``patience``).
        seed: torch seed for the sub-networks' initialization.
        keep_all: keep every stage in the returned model instead of truncating to ``chosen``.
        runway, horizon: the model's (default: the trials').
        test: optional held-out trials; adds ``test_r2`` to each stage of the curve (never used for choosing).
        device: where the model trains and forecasts (default CPU; see :class:`~neuro_opt.tbfm.model.TBFM`).
    """
    if max_bases < 1:
        raise ValueError(f"max_bases must be >= 1, got {max_bases}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    R = train.runway_len if runway is None else runway
    H = train.horizon if horizon is None else horizon
    model = AdditiveTBFM(train.n_channels, R, H, hidden=hidden, depth=depth, device=device)
    model.check_trials(train)
    model.set_normalizer(*zscore_stats(train))
    curve: list[dict[str, Any]]  # per stage: n_bases (an int), the R2s and the time (floats)
    states: dict[int, dict[str, torch.Tensor]]
    curve, best, bad, states = [], -np.inf, 0, {}
    for k in range(1, max_bases + 1):
        ts = time.perf_counter()
        net = model.add_basis()
        fit_tbfm(
            model,
            train,
            val,
            method=method,
            lam=lam,
            max_iters=max_iters,
            patience=stage_patience,
            seed=seed + k,
            trainable=list(net.parameters()),
            set_normalizer=False,
        )
        val_r2 = r2_horizon(model.predict(val), val.target[:, :H])
        train_r2 = r2_horizon(model.predict(train), train.target[:, :H])
        stage = {"n_bases": k, "val_r2": val_r2, "train_r2": train_r2, "train_s": time.perf_counter() - ts}
        if test is not None:
            stage["test_r2"] = r2_horizon(model.predict(test), test.target[:, :H])
        curve.append(stage)
        states[k] = {n: v.detach().clone() for n, v in model.state_dict().items()}
        bad = 0 if val_r2 > best + min_delta else bad + 1
        best = max(best, val_r2)
        if bad >= patience:
            break
    # the chosen count: the fewest bases within min_delta of the best validation R2 (parsimony, as with PCA)
    best_k = min(c["n_bases"] for c in curve if c["val_r2"] >= best - min_delta)
    best_state = states[best_k]
    if not keep_all and best_k < model.n_bases:
        chosen = AdditiveTBFM(train.n_channels, R, H, hidden=hidden, depth=depth, device=device)
        for _ in range(best_k):
            chosen.add_basis()
        chosen.load_state_dict(best_state)
        model = chosen
    return FSAMResult(model=model, curve=curve, chosen=best_k, train_s=time.perf_counter() - t0)
