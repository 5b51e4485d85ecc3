"""Flat GP-BO over a whole pattern space with the product space x time kernel (seed 003's baseline)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from neuro_opt.acquisition import UCB, argmax_random_ties
from neuro_opt.algorithms.base import ModelOptimizer
from neuro_opt.gp.product import ProductGP, split_inputs


def product_gp_kwargs(
    rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_low, outputscale_high, fit_steps, lr
) -> dict:
    return dict(
        rho_space=tuple(rho_space),
        rho_time=tuple(rho_time),
        noise=(noise_min, noise_max),
        noise_units=noise_units,
        outputscale=(outputscale_low, outputscale_high),
        fit_steps=fit_steps,
        lr=lr,
    )


class ProductGPBO(ModelOptimizer):
    """Flat GP-BO with the product space x time kernel over a whole pattern space (the baseline).

    UCB ``mu + kappa * sigma`` on :class:`ProductGP`; ``n_random`` random queries first (or
    the prior's argmax first when a prior is given); the believed best is the posterior
    mean's argmax. A ``prior`` map becomes one basis with weight ``prior_scale`` a priori,
    refit like the hierarchical weights. Spatial inputs are the grid indices of the
    dimensions not named ``*_ms``, temporal ones the ``*_ms`` values / ``time_unit_ms``.

    Args:
        kappa, n_random: acquisition and initial random queries.
        rho_space, rho_time: ``[low, high]`` length-scale bounds (space in grid steps, time in
            ``time_unit_ms``, by default ms). The delay length-scale's upper bound matters: the
            synergy objective peaks at one delay, and a length-scale as long as the delay step
            (20 ms) smooths that peak away, so stage 2 wastes queries on the wrong delays.
        noise_min, noise_max, noise_units: noise std bounds, ``raw`` (response units) or
            ``normalized`` (divided by the largest response seen).
        outputscale_low, outputscale_high: kernel output scale bounds (normalized scale).
        weight_sd: prior std of the prior map's weight.
        fit_steps, lr: refit effort per query.
    """

    name = "gpbo_product"

    def __init__(
        self,
        space,
        n_reps=1,
        seed=0,
        prior=None,
        kappa: float = 3.0,
        n_random: int = 1,
        rho_space: Sequence[float] = (1.0, 2.0),
        rho_time: Sequence[float] = (5.0, 20.0),
        noise_min: float = 1e-3,
        noise_max: float = 0.05,
        noise_units: str = "normalized",
        outputscale_low: float = 0.05,
        outputscale_high: float = 1.0,
        prior_scale: float = 0.75,
        weight_sd: float = 0.5,
        time_unit_ms: float = 1.0,
        fit_steps: int = 15,
        lr: float = 0.1,
        capacity: int | None = None,
    ):
        super().__init__(space, n_reps, seed, prior)
        self.ucb = UCB(kappa)
        if int(n_random) < 0 or (prior is None and int(n_random) < 1):
            raise ValueError(f"n_random must be >= 1 (>= 0 with a prior), got {n_random!r}")
        self.kappa, self.n_random = self.ucb.kappa, int(n_random)
        S, T = split_inputs(space, time_unit_ms)
        J = 0 if self.prior is None else 1
        self.gp = ProductGP(
            S,
            T,
            self.b,
            n_basis=J,
            weight_mean=[prior_scale] * J,
            weight_sd=weight_sd,
            capacity=capacity or 64,
            **product_gp_kwargs(
                rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_low, outputscale_high, fit_steps, lr
            ),
        )
        if self.prior is not None:
            top = self.prior.max()
            self.gp.set_scale(1.0)
            self.gp.fixed[:] = False  # the scale still follows the responses; the map is normalized to max 1
            self.gp.H[:] = torch.as_tensor(self.prior / top if top > 0 else self.prior)[None, :, None]
        self._post: tuple[np.ndarray, np.ndarray] | None = None

    def ask(self) -> np.ndarray:
        initial = self.ask_initial()
        if initial is not None:
            return initial
        mean, var = self.posterior()
        return self.ucb.argmax(mean, var, self.rng, "product GP-BO")

    def _tell(self, points, responses) -> None:
        self.gp.observe(points, responses)
        self._post = None
        if self.t >= self.n_initial:
            self.gp.fit()

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance on the normalized scale, ``b x P`` each."""
        if self._post is None:
            m, v = self.gp.posterior()
            self._post = (m.numpy(), v.numpy())
        return self._post

    def best(self) -> np.ndarray:
        if self.t == 0:
            return self.ask_first()
        return argmax_random_ties(self.posterior()[0], self.rng)


# ----------------------------------------------------------------------------- patterns
