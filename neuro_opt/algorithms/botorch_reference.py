"""GP-BO as it ran before the batched engine, as an ask/tell optimizer: one BoTorch model per
replicate per query (the model: :mod:`neuro_opt.gp.reference`)."""

from __future__ import annotations

import numpy as np
import torch

from neuro_opt.acquisition import UCB, argmax_random_ties
from neuro_opt.algorithms.base import Optimizer
from neuro_opt.gp import defaults
from neuro_opt.gp.reference import fit_reference, reference_model


class BotorchGPBO(Optimizer):
    """The reference loop as an ask/tell optimizer (``algorithms.make("gpbo_botorch", ...)``): each
    replicate keeps its own observations and, after every ``tell``, a fresh ``SingleTaskGP`` fitted
    with ``fit_gpytorch_mll`` on all of them, then the posterior over every point
    (:mod:`neuro_opt.gp.reference`). One model per replicate per query, as GP-BO ran before the
    batched engine: this is what a sweep costs without it (``+exp=noise_sweep grid.algorithm=[gpbo_botorch,...]``).
    No prior map; ``capacity`` and ``device`` are accepted and ignored (the simulator passes them).
    """

    name = "gpbo_botorch"

    def __init__(
        self,
        space,
        n_reps=1,
        seed=0,
        prior=None,
        kappa: float = defaults.KAPPA,
        n_random: int = defaults.N_RANDOM,
        rho_low: float = defaults.RHO_LOW,
        rho_high: float = defaults.RHO_HIGH,
        noise_min: float = defaults.NOISE_MIN,
        noise_max: float = defaults.NOISE_MAX,
        outputscale_low: float = defaults.OUTPUTSCALE_LOW,
        outputscale_high: float = defaults.OUTPUTSCALE_HIGH,
        capacity=None,
        device: str = "cpu",
    ):
        if prior is not None:
            raise ValueError("gpbo_botorch (the reference loop) takes no prior map")
        super().__init__(space, n_reps, seed, None)
        self.ucb = UCB(kappa)
        if int(n_random) < 1:
            raise ValueError(f"n_random must be >= 1, got {n_random!r}")
        self.kappa, self.n_random = self.ucb.kappa, int(n_random)
        self.bounds = (rho_low, rho_high, noise_min, noise_max, outputscale_low, outputscale_high)
        self.X_all = torch.tensor(space.X, dtype=torch.float64)
        self.pts: list[list[int]] = [[] for _ in range(self.b)]
        self.resp: list[list[float]] = [[] for _ in range(self.b)]
        self.mean = np.zeros((self.b, self.P))
        self.var = np.ones((self.b, self.P))

    def ask(self) -> np.ndarray:
        if self.t < self.n_random:
            return self.rng.integers(0, self.P, self.b)
        return self.ucb.argmax(self.mean, self.var, self.rng, "reference GP-BO")

    def _tell(self, points, responses) -> None:
        for q in range(self.b):
            self.pts[q].append(int(points[q]))
            self.resp[q].append(float(responses[q]))
            r = np.asarray(self.resp[q])
            top = r.max()
            y = torch.as_tensor(r / top if top > 0 else r, dtype=torch.float64)
            model, mll = reference_model(self.X_all[torch.as_tensor(self.pts[q])], y, *self.bounds)
            fit_reference(mll)
            model.eval()
            with torch.no_grad():
                post = model.posterior(self.X_all)
                self.mean[q] = post.mean.squeeze(-1).numpy()
                self.var[q] = post.variance.squeeze(-1).numpy()

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance on the normalized scale, ``b x P`` each."""
        return self.mean.copy(), self.var.copy()

    def best(self) -> np.ndarray:
        if self.t == 0:
            return self.ask_first()
        return argmax_random_ties(self.mean, self.rng)
