"""The plain single-run BoTorch GP-BO loop: the reference the batched engine is measured against.

One complete simulated GP-BO run done the ordinary way, one model per query:

* a BoTorch ``SingleTaskGP`` (float64) on every observation so far, responses divided by
  the largest response seen so far (the published normalization), no outcome transform;
* kernel ``ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=d))``: one length-scale per
  dimension constrained to ``Interval(rho_low, rho_high)`` and an output scale constrained
  to ``Interval(outputscale_min, outputscale_max)``; Gaussian likelihood with noise
  *variance* in ``Interval(noise_min**2, noise_max**2)`` (the bounds are on the noise std);
  zero mean (0 is the no-response level of the normalized scale). These are the same
  model and bounds as the engine's variable-rho mode (:class:`neuro_opt.gp.BatchGP`), so
  the comparison measures the engine, not a different model;
* a fresh model fitted with ``fit_gpytorch_mll`` (BoTorch's default: L-BFGS-B on the
  exact marginal likelihood, from GPyTorch's default initialization) after every query;
* the posterior (latent ``f``, no observation noise) over every point of the space, the
  next query the argmax of UCB ``mu + kappa * sigma`` with ties broken at random, the
  believed best the argmax of the posterior mean.

Query schedule, random streams, response sampling and the exploration/exploitation
definitions follow :func:`neuro_opt.simulate.simulate` with ``algorithm="gpbo"`` and one
replicate: the seed spawns an algorithm stream and a response stream, the first
``n_random`` queries are uniform at random, and random draws happen in the same order, so
both start from the same queries and responses.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from neuro_opt.acquisition import UCB, argmax_random_ties
from neuro_opt.algorithms.base import Optimizer
from neuro_opt.datasets.base import Problem, sample_responses
from neuro_opt.trace import trace_table


def reference_model(X: torch.Tensor, y: torch.Tensor, rho_low: float, rho_high: float, noise_min: float,
                    noise_max: float, outputscale_min: float, outputscale_max: float):
    """An unfitted ``SingleTaskGP`` with the published kernel, likelihood and bounds.

    Args:
        X: ``n x d`` training inputs (grid indices); y: ``n`` normalized responses.
    Returns:
        ``(model, mll)``: the model and its ``ExactMarginalLogLikelihood``.
    """
    from botorch.models import SingleTaskGP
    from gpytorch.constraints import Interval
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.likelihoods import GaussianLikelihood
    from gpytorch.means import ZeroMean
    from gpytorch.mlls import ExactMarginalLogLikelihood

    d = X.shape[-1]
    covar = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=d, lengthscale_constraint=Interval(rho_low, rho_high)),
                        outputscale_constraint=Interval(outputscale_min, outputscale_max))
    likelihood = GaussianLikelihood(noise_constraint=Interval(noise_min ** 2, noise_max ** 2))
    model = SingleTaskGP(X, y.unsqueeze(-1), likelihood=likelihood, covar_module=covar, mean_module=ZeroMean(),
                         outcome_transform=None)
    return model, ExactMarginalLogLikelihood(model.likelihood, model)


def fit_reference(mll) -> bool:
    """``fit_gpytorch_mll`` (L-BFGS-B, BoTorch's retries) on a reference model. When every attempt
    fails (BoTorch's ``ModelFittingError``, seen with noiseless repeated responses and the noise at
    its 1e-4 floor) the model keeps the parameters BoTorch left it with and the run goes on, as a
    lab's loop would rather than stop the sweep. Returns whether the fit succeeded."""
    from botorch.exceptions.errors import ModelFittingError
    from botorch.exceptions.warnings import OptimizationWarning
    from botorch.fit import fit_gpytorch_mll

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizationWarning)  # L-BFGS-B stopping notes, once per query
        try:
            fit_gpytorch_mll(mll)
        except ModelFittingError:
            return False
    return True


def fitted_hyperparameters(model) -> dict:
    """``{"lengthscale": d list, "noise": std, "outputscale": float}`` of a reference model."""
    return {"lengthscale": model.covar_module.base_kernel.lengthscale.detach().flatten().tolist(),
            "noise": float(model.likelihood.noise.detach().sqrt().item()),
            "outputscale": float(model.covar_module.outputscale.detach().item())}


def botorch_reference_run(problem: Problem, n_queries: int | None = None, seed=0, noise: float = 0.0,
                          kappa: float = 3.0, n_random: int = 1, rho_low: float = 0.02, rho_high: float = 5.0,
                          noise_min: float = 1e-4, noise_max: float = 0.05, outputscale_min: float = 0.25,
                          outputscale_max: float = 1.0, response_mode: str = "gaussian",
                          on_query: Callable | None = None) -> pa.Table:
    """One simulated GP-BO run with a plain BoTorch loop (module docstring).

    Args:
        problem: ground truth and, for repetition modes, the recordings (no prior map is used).
        n_queries: queries in the run; None = the size of the space.
        seed: int or SeedSequence (spawned exactly as :func:`neuro_opt.simulate.simulate` does).
        noise, response_mode: response sampling, as in :func:`neuro_opt.simulate.simulate`.
        kappa, n_random, rho_low, rho_high, noise_min, noise_max, outputscale_min,
            outputscale_max: GP-BO hyperparameters, as in :class:`neuro_opt.algorithms.GPBO`
            (variable-rho; the noise bounds are on the std).
        on_query: optional ``on_query(t, model, mean, var, points, responses)`` after the
            fit of 1-based query ``t``: the fitted model, the ``P`` posterior mean and
            variance on the normalized scale, and the ``t`` points and raw responses so far.

    Returns:
        Arrow table (``TRACE_SCHEMA``), ``n_queries`` rows, ``rep`` 0.
    """
    P = problem.space.n_points
    if n_queries is None:
        n_queries = P
    if not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}")
    ucb = UCB(kappa)
    if int(n_random) < 1:
        raise ValueError(f"n_random must be >= 1 (the reference loop takes no prior), got {n_random!r}")
    if not (0 < rho_low < rho_high and 0 < noise_min < noise_max and 0 < outputscale_min < outputscale_max):
        raise ValueError(f"need 0 < low < high for every bound, got rho ({rho_low}, {rho_high}), noise "
                         f"({noise_min}, {noise_max}), outputscale ({outputscale_min}, {outputscale_max})")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    s_alg, s_resp = ss.spawn(2)
    rng_alg, rng_resp = np.random.default_rng(s_alg), np.random.default_rng(s_resp)
    X_all = torch.tensor(problem.space.X, dtype=torch.float64)
    bounds = (rho_low, rho_high, noise_min, noise_max, outputscale_min, outputscale_max)

    pts = np.empty(n_queries, dtype=np.int64)
    resp = np.empty(n_queries)
    best = np.empty(n_queries, dtype=np.int64)
    explore = np.empty(n_queries)
    exploit = np.empty(n_queries)
    mean = var = None
    for t in range(n_queries):
        truth = problem.truth_at(t)
        if t < n_random:  # the first query and the initial random ones, as GPBO.ask
            x = rng_alg.integers(0, P, 1)
        else:
            x = ucb.argmax(mean[None, :], var[None, :], rng_alg, f"reference GP-BO (query {t + 1})")
        y = sample_responses(problem, x, rng_resp, noise=noise, mode=response_mode,
                             truth=None if problem.stationary else truth)
        pts[t], resp[t] = x[0], y[0]
        # fit a new model on everything seen so far, responses divided by the largest one
        top = resp[:t + 1].max()
        y_norm = torch.as_tensor(resp[:t + 1] / top if top > 0 else resp[:t + 1], dtype=torch.float64)
        model, mll = reference_model(X_all[torch.as_tensor(pts[:t + 1])], y_norm, *bounds)
        fit_reference(mll)
        model.eval()
        with torch.no_grad():
            post = model.posterior(X_all)
            mean = post.mean.squeeze(-1).numpy()
            var = post.variance.squeeze(-1).numpy()
        if on_query is not None:
            on_query(t + 1, model, mean, var, pts[:t + 1].copy(), resp[:t + 1].copy())
        b = argmax_random_ties(mean[None, :], rng_alg)[0]
        tmax = truth.max()
        best[t] = b
        explore[t] = truth[b] / tmax if tmax > 0 else 0.0
        exploit[t] = truth[x[0]] / tmax if tmax > 0 else 0.0
    return trace_table({"rep": np.zeros(n_queries), "query": np.arange(1, n_queries + 1), "point": pts,
                        "response": resp, "best": best, "exploration": explore, "exploitation": exploit})


class BotorchGPBO(Optimizer):
    """The reference loop as an ask/tell optimizer (``algorithms.make("gpbo_botorch", ...)``): each
    replicate keeps its own observations and, after every ``tell``, a fresh ``SingleTaskGP`` fitted
    with ``fit_gpytorch_mll`` on all of them, then the posterior over every point (module
    docstring). One model per replicate per query, as GP-BO ran before the batched engine: this
    is what a sweep costs without it (``+exp=noise_sweep grid.algorithm=[gpbo_botorch,...]``).
    No prior map; ``capacity`` and ``device`` are accepted and ignored (the simulator passes them).
    """

    name = "gpbo_botorch"

    def __init__(self, space, n_reps=1, seed=0, prior=None, kappa: float = 3.0, n_random: int = 1,
                 rho_low: float = 0.02, rho_high: float = 5.0, noise_min: float = 1e-4,
                 noise_max: float = 0.05, outputscale_min: float = 0.25, outputscale_max: float = 1.0,
                 capacity=None, device: str = "cpu"):
        if prior is not None:
            raise ValueError("gpbo_botorch (the reference loop) takes no prior map")
        super().__init__(space, n_reps, seed, None)
        self.ucb = UCB(kappa)
        if int(n_random) < 1:
            raise ValueError(f"n_random must be >= 1, got {n_random!r}")
        self.kappa, self.n_random = self.ucb.kappa, int(n_random)
        self.bounds = (rho_low, rho_high, noise_min, noise_max, outputscale_min, outputscale_max)
        self.X_all = torch.tensor(space.X, dtype=torch.float64)
        self.pts = [[] for _ in range(self.b)]
        self.resp = [[] for _ in range(self.b)]
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
