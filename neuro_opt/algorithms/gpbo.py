"""GP-BO as published (Cell Reports Medicine STAR Methods; STAR Protocols).

Matérn-5/2 GP with a Gaussian likelihood over the discrete space; responses
divided by the largest response seen so far; the first query is the prior's
argmax when a prior is given, else random; ``n_random`` random queries in all
(counting that first one when it is random); then at every query the GP is
refit (variable-rho) or updated (fixed-rho) and the next query is the argmax of
UCB ``mu + kappa * sigma``, ties broken at random. The believed best point is
the argmax of the posterior mean.
"""

from __future__ import annotations

import numpy as np
import torch

from neuro_opt.acquisition import UCB, argmax_random_ties
from neuro_opt.algorithms.base import ModelOptimizer
from neuro_opt.gp import BatchGP, defaults


class GPBO(ModelOptimizer):
    """Batched GP-BO.

    Args:
        space, n_reps, seed: see :class:`Optimizer`.
        kappa: UCB exploration weight.
        n_random: initial random queries (>= 1 without a prior; with a prior
            the first query is the prior's best and ``n_random`` counts the
            random ones after it).
        mode: ``"variable"`` (variable-rho) or ``"fixed"`` (fixed-rho).
        rho_low, rho_high: length-scale bounds, in grid steps (variable-rho).
        noise_min, noise_max: likelihood noise std bounds (variable-rho).
        outputscale_low, outputscale_high: bounds of the kernel output scale, the prior
            variance of the normalized response (variable-rho).
        rho, noise, outputscale: fixed length-scale, noise std and output scale (fixed-rho).
        prior: optional ``P`` prior map, any positive scale; normalized to max 1
            and multiplied by ``prior_scale``.
        prior_scale: weight of the prior mean (0.5 protocol, 0.75 paper).
        prior_fade: the prior's weight falls linearly to zero over this many
            queries (None: never fades).
        fit_steps, lr: hyperparameter refit effort per query (variable-rho).
        fit_tol: a replicate's refit stops once an Adam step changed its log marginal likelihood
            by at most this many nats (0: always ``fit_steps`` steps).
        capacity: queries to allocate for (default: the space size, 64 to 256); grows as needed.
    """

    name = "gpbo"
    batch_draws = True  # ask_first/ask_initial: integers(.., b); ties: random((b, P))

    def __init__(
        self,
        space,
        n_reps=1,
        seed=0,
        prior=None,
        kappa: float = defaults.KAPPA,
        n_random: int = defaults.N_RANDOM,
        mode: str = "variable",
        rho_low: float = defaults.RHO_LOW,
        rho_high: float = defaults.RHO_HIGH,
        noise_min: float = defaults.NOISE_MIN,
        noise_max: float = defaults.NOISE_MAX,
        outputscale_low: float = defaults.OUTPUTSCALE_LOW,
        outputscale_high: float = defaults.OUTPUTSCALE_HIGH,
        rho=1.0,
        noise: float = 0.05,
        outputscale: float = 1.0,
        prior_scale: float = 0.75,
        prior_fade: int | None = None,
        fit_steps: int = defaults.FIT_STEPS,
        lr: float = defaults.LR,
        fit_tol: float = 0.0,
        capacity: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(space, n_reps, seed, prior)
        self.ucb = UCB(kappa)
        if int(n_random) < 0 or (prior is None and int(n_random) < 1):
            raise ValueError(f"n_random must be >= 1 (>= 0 with a prior), got {n_random!r}")
        self.kappa, self.n_random = self.ucb.kappa, int(n_random)
        self.prior_fade = prior_fade
        prior_mean = None
        if self.prior is not None:
            top = self.prior.max()
            prior_mean = prior_scale * (self.prior / top if top > 0 else self.prior)
        self.gp = BatchGP(
            space.X,
            self.b,
            capacity or min(max(64, space.n_points), 256),
            mode=mode,
            rho_bounds=(rho_low, rho_high),
            noise_bounds=(noise_min, noise_max),
            outputscale_bounds=(outputscale_low, outputscale_high),
            lengthscale=rho,
            noise=noise,
            outputscale=outputscale,
            prior_mean=prior_mean,
            fit_steps=fit_steps,
            lr=lr,
            fit_tol=fit_tol,
            device=device,
        )
        self._mean = self._var = None

    def ask(self) -> np.ndarray:
        initial = self.ask_initial()
        if initial is not None:
            return initial
        if self._mean is None and self.gp.prefer_screen:
            # large space, no posterior at hand: the same argmax without sigma everywhere (BatchGP.screened)
            ucb = self.gp.screened(self.kappa).cpu().numpy()
            if np.isnan(ucb).any() or np.isposinf(ucb).any() or not np.isfinite(ucb.max(1)).all():
                raise FloatingPointError("GP-BO acquisition has NaN/inf values; the GP state is corrupt")
            return argmax_random_ties(ucb, self.rng)
        mean, var = self._posterior()
        return self.ucb.argmax(mean, var, self.rng)

    def _tell(self, points, responses) -> None:
        if self.prior_fade:
            self.gp.set_prior_weight(max(0.0, 1.0 - self.t / float(self.prior_fade)))
        self.gp.observe(points, responses)
        self._mean = None
        if self.t >= self.n_initial:  # the model is used from now on
            self.gp.fit()

    def _posterior(self):
        if self._mean is None:
            with torch.no_grad():
                mean, var = self.gp.posterior()
            self._mean, self._var = mean.cpu().numpy(), var.cpu().numpy()
        return self._mean, self._var

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance on the normalized scale, ``b x P`` each."""
        if self.t >= self.n_initial or self.gp.mode == "fixed":
            return self._posterior()
        self.gp.fit()
        return self._posterior()

    def best(self) -> np.ndarray:
        if self.t == 0:
            return self.ask_first()
        if self._mean is None and self.t >= self.n_initial and self.gp.prefer_screen:
            mean = self.gp.screened(0.0).cpu().numpy()  # the posterior mean where it can be maximal
            if np.isnan(mean).any() or not np.isfinite(mean.max(1)).all():
                raise FloatingPointError("GP-BO posterior mean has NaN/inf values; the GP state is corrupt")
            return argmax_random_ties(mean, self.rng)
        mean, _ = self.posterior()
        return argmax_random_ties(mean, self.rng)
