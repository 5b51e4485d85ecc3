"""Tuning GP-BO's hyperparameters on simulated runs: the Optuna study (:mod:`sweeps.kinds.tune`)
and the published one-at-a-time calibration (:mod:`sweeps.kinds.calibrate`) share these parts:
the search space and objective, the validated setup, the Ray scorer, the held-out comparison,
the study and its figures."""
