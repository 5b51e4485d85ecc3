"""The plain BoTorch GP model GP-BO ran on before the batched engine: the reference it is measured against.

* a BoTorch ``SingleTaskGP`` (float64) on every observation so far, responses divided by
  the largest response seen so far (the published normalization), no outcome transform;
* kernel ``ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=d))``: one length-scale per
  dimension constrained to ``Interval(rho_low, rho_high)`` and an output scale constrained
  to ``Interval(outputscale_low, outputscale_high)``; Gaussian likelihood with noise
  *variance* in ``Interval(noise_min**2, noise_max**2)`` (the bounds are on the noise std);
  zero mean (0 is the no-response level of the normalized scale). These are the same
  model and bounds as the engine's variable-rho mode (:class:`neuro_opt.gp.BatchGP`), so
  the comparison measures the engine, not a different model;
* a fresh model fitted with ``fit_gpytorch_mll`` (BoTorch's default: L-BFGS-B on the
  exact marginal likelihood, from GPyTorch's default initialization) after every query.

The loop around it is :func:`neuro_opt.reference_loop.botorch_reference_run`; the ask/tell
optimizer, :class:`neuro_opt.algorithms.botorch_reference.BotorchGPBO`.
"""

from __future__ import annotations

import warnings

import torch


def reference_model(
    X: torch.Tensor,
    y: torch.Tensor,
    rho_low: float,
    rho_high: float,
    noise_min: float,
    noise_max: float,
    outputscale_low: float,
    outputscale_high: float,
):
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
    covar = ScaleKernel(
        MaternKernel(nu=2.5, ard_num_dims=d, lengthscale_constraint=Interval(rho_low, rho_high)),
        outputscale_constraint=Interval(outputscale_low, outputscale_high),
    )
    likelihood = GaussianLikelihood(noise_constraint=Interval(noise_min**2, noise_max**2))
    model = SingleTaskGP(
        X, y.unsqueeze(-1), likelihood=likelihood, covar_module=covar, mean_module=ZeroMean(), outcome_transform=None
    )
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
    return {
        "lengthscale": model.covar_module.base_kernel.lengthscale.detach().flatten().tolist(),
        "noise": float(model.likelihood.noise.detach().sqrt().item()),
        "outputscale": float(model.covar_module.outputscale.detach().item()),
    }
