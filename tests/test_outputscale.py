"""The kernel output-scale bounds as GP-BO hyperparameters: one declaration of the defaults, the
engine honours the bounds, the tuning space searches them as a bound and a ratio, and the default
tuning objective has an exploitation term."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from neuro_opt import algorithms
from neuro_opt.datasets import array_space
from neuro_opt.gp import defaults
from sweeps.schema import ConfigError
from sweeps.tuning.space import Objective, SearchSpec
from tests.launching import ROOT

GPBO_YAML = yaml.safe_load((ROOT / "conf/algorithm/gpbo.yaml").read_text())


def test_the_hydra_config_repeats_the_declared_defaults():
    declared = {
        "kappa": defaults.KAPPA,
        "n_random": defaults.N_RANDOM,
        "rho_low": defaults.RHO_LOW,
        "rho_high": defaults.RHO_HIGH,
        "noise_min": defaults.NOISE_MIN,
        "noise_max": defaults.NOISE_MAX,
        "outputscale_low": defaults.OUTPUTSCALE_LOW,
        "outputscale_high": defaults.OUTPUTSCALE_HIGH,
        "fit_steps": defaults.FIT_STEPS,
        "lr": defaults.LR,
    }
    assert {k: GPBO_YAML[k] for k in declared} == declared
    gp = algorithms.make("gpbo", array_space("rat"), n_reps=1).gp
    assert (float(gp.os_con.lower_bound), float(gp.os_con.upper_bound)) == (
        defaults.OUTPUTSCALE_LOW,
        defaults.OUTPUTSCALE_HIGH,
    )


def _fitted_outputscales(low: float, high: float) -> np.ndarray:
    """GP-BO on a sparse map (one hot spot, the rest near zero): the output scales fitted after 16 queries."""
    space = array_space("rat")
    truth = np.full(space.n_points, 0.02)
    truth[5] = 1.0
    rng = np.random.default_rng(3)
    # 10 Adam steps per query (more than the default): across bounds 10 decades wide a raw step moves
    # the scale ~10 %, and 16 queries of 3 steps do not carry it from its start to where the data puts it
    opt = algorithms.make(
        "gpbo", space, n_reps=6, seed=0, outputscale_low=low, outputscale_high=high, fit_steps=10
    )
    for _ in range(16):
        x = opt.ask()
        opt.tell(x, np.clip(truth[x] + 0.02 * rng.standard_normal(x.size), 0, None))
    return opt.gp.outputscale.detach().numpy()


def test_the_engine_fits_the_output_scale_within_the_bounds_it_is_given():
    narrow = _fitted_outputscales(0.5, 0.6)
    assert ((narrow >= 0.5 - 1e-9) & (narrow <= 0.6 + 1e-9)).all()
    wide = _fitted_outputscales(1e-5, 1e5)
    assert (wide < 0.5).any()  # left free on a sparse map it shrinks below what the narrow bounds allowed


def test_the_bounds_are_searched_as_the_upper_bound_and_a_ratio():
    spec = SearchSpec(
        {
            "outputscale_high": {"low": 0.5, "high": 100.0, "log": True},
            "outputscale_ratio": {"low": 2.0, "high": 1e4, "log": True},
        },
        {"name": "gpbo", **GPBO_YAML},
        16,
    )
    alg = spec.resolve({"outputscale_high": 2.0, "outputscale_ratio": 8.0})
    assert (alg["outputscale_low"], alg["outputscale_high"]) == (0.25, 2.0)
    assert spec.to_sampled({"outputscale_low": 0.25, "outputscale_high": 1.0}, "params.start") == {
        "outputscale_high": 1.0,
        "outputscale_ratio": 4.0,
    }
    with pytest.raises(ConfigError, match="outputscale_low and outputscale_high are both searched"):
        SearchSpec(
            {"outputscale_low": {"low": 0.1, "high": 0.5}, "outputscale_high": {"low": 1.0, "high": 2.0}},
            {"name": "gpbo", **GPBO_YAML},
            16,
        )


def test_the_default_tuning_objective_weighs_exploitation_along_the_run():
    cfg = yaml.safe_load((ROOT / "conf/exp/tune_gpbo.yaml").read_text())
    obj = Objective.from_config(cfg["params"]["objective"], 16)
    assert obj.name == "mix" and obj.weights.get("exploitation_auc", 0) > 0
    assert (
        "exploitation_auc"
        in yaml.safe_load((ROOT / "conf/exp/kappa_calibration.yaml").read_text())["params"]["objective"]["weights"]
    )
    curves = {"exploration": np.array([[0.0, 0.5, 1.0]]), "exploitation": np.array([[0.0, 0.3, 0.6]])}
    w = obj.weights
    expected = w.get("exploration_final", 0) * 1.0 + w.get("exploitation_auc", 0) * 0.3
    assert obj.per_run(curves)[0] == pytest.approx(expected)
    # a single term drops the default mix's weights
    assert Objective.from_config({**cfg["params"]["objective"], "name": "exploitation_final"}, 16).weights == {}
