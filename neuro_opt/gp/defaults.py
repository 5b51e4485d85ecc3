"""GP-BO's default hyperparameters, declared once for every implementation.

The engine (:class:`neuro_opt.gp.BatchGP`), :class:`neuro_opt.algorithms.GPBO`, the BoTorch
reference (:class:`neuro_opt.algorithms.botorch_reference.BotorchGPBO`) and the plain reference
loop (:func:`neuro_opt.reference_loop.botorch_reference_run`) take their defaults from here, so a
calibrated value changes in one place. ``conf/algorithm/gpbo.yaml`` repeats them for Hydra (a
test checks the two agree).

Sources: kappa, n_random, the length-scale and noise bounds are the published rat 2-D values
(Cell Reports Medicine STAR Methods; STAR Protocols). The output-scale bounds are not published:
they come from neuro-opt's calibration on training subjects (docs/calibration.md); nor is the
refit's effort (see FIT_STEPS).
"""

from __future__ import annotations

KAPPA = 3.0
N_RANDOM = 1
RHO_LOW, RHO_HIGH = 0.02, 5.0  # length-scale bounds, in grid steps
NOISE_MIN, NOISE_MAX = 1e-4, 0.05  # likelihood noise std bounds, on the normalized response
OUTPUTSCALE_LOW, OUTPUTSCALE_HIGH = 0.01, 2.0  # kernel output scale bounds (prior variance, normalized)
# The refit's effort: Adam steps per query, warm-started from the previous query's values, and the
# step size (on the raw, sigmoid-transformed parameters). Not published (the companion code runs
# GPy's optimizer); +exp=throughput compares this setting run for run with the earlier 10 steps
# (its params.baseline) in final exploration and exploitation.
FIT_STEPS, LR = 5, 0.1
