"""Typed config groups: a wrong type or an unknown key in any group stops a launch before any work,
naming the key (sweeps.config, sweeps.schema, and the online session's own schemas)."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeps import config
from sweeps.grid import CONF_DIR, load_group_option
from sweeps.runner import build_cells
from sweeps.schema import ConfigError

BAD = (ConfigError, HydraException, OmegaConfBaseException)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def cells(*overrides: str):
    return build_cells(composed(*overrides), list(overrides))[1]


# (group, a wrong type, an unknown key) for every group of the root config
GROUPS = [
    ("algorithm", ["algorithm.kappa=abc"], ["+algorithm.kapa=3.0"]),
    ("algorithm (a grid axis)", ["grid.algorithm=[gpbo,extensive]", "algorithm.n_random=1.5"],
     ["grid.algorithm=[extensive,greedy]", "+algorithm.kappa=2.0"]),
    ("dataset", ["dataset.n_subjects=two"], ["+dataset.n_subject=2"]),
    ("dataset (another option)", ["dataset=gamma4d", "dataset.seed=0.5"], ["dataset=gamma4d", "+dataset.beta=1.0"]),
    ("tracking", ["tracking.uri=[1,2]"], ["+tracking.url=sqlite:///x.db"]),
    ("cluster", ["cluster.num_cpus=many"], ["+cluster.cpus=2"]),
    ("report", ["report.pool=muscle"], ["+report.pools=[muscle]"]),
    ("study", ["study.heartbeat_s=soon"], ["+study.heartbeat=30"]),
    ("top level", ["n_reps=many"], ["+n_rep=3"]),
]


@pytest.mark.parametrize("group,wrong_type,unknown_key", GROUPS, ids=[g[0] for g in GROUPS])
def test_a_wrong_type_or_an_unknown_key_names_the_key(group, wrong_type, unknown_key):
    for overrides in (wrong_type, unknown_key):
        key = overrides[-1].lstrip("+").split("=")[0]
        with pytest.raises(BAD) as info:
            cells("+exp=noise_sweep", *overrides)
        assert key.split(".")[-1] in str(info.value), (overrides, str(info.value))


def test_a_config_error_says_the_value_and_what_is_expected_on_one_line():
    with pytest.raises(ConfigError) as info:
        cells("+exp=noise_sweep", "dataset.n_subjects=two")
    assert str(info.value) == ("dataset.n_subjects='two': expected an integer (dataset 'synthetic_nhp' takes "
                               "n_subjects: int)")
    with pytest.raises(ConfigError, match=r"^algorithm.n_random=1.5: expected an integer"):
        cells("+exp=noise_sweep", "algorithm.n_random=1.5", "~grid.algorithm")
    with pytest.raises(ConfigError, match=r"^algorithm.kapa: unknown hyperparameter 'kapa'; it takes kappa, "
                                          r"n_random, .* \(algorithm 'gpbo'\)$"):
        cells("+exp=noise_sweep", "+algorithm.kapa=3.0", "~grid.algorithm")
    with pytest.raises(ConfigError, match=r"^dataset.name='nope': not a known dataset; available: .*synthetic_nhp"):
        cells("+exp=noise_sweep", "dataset.name=nope")
    for exc in (info.value,):
        assert "\n" not in str(exc)


def test_every_option_file_passes_its_schema_and_the_schemas_are_in_the_config_store():
    store = ConfigStore.instance()
    for group in config.GROUPS:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert options
        for name in options:
            option = load_group_option(group, name)
            config.check_option(group, option)
            schema = store.load(f"schema/{group}/{option.name}.yaml").node
            assert set(option) <= set(schema), (group, name)  # every key of the file is a typed field


def test_the_schema_is_read_from_the_code_it_configures():
    from neuro_opt import algorithms

    schema = OmegaConf.structured(config.option_schema("algorithm", "gpbo"))
    assert set(schema) - {"name"} == set(algorithms.parameters("gpbo"))
    schema.kappa = 2  # a number becomes a float, as the optimizer's annotation says
    assert schema.kappa == 2.0 and isinstance(schema.kappa, float)
    with pytest.raises(OmegaConfBaseException):
        schema.n_random = "one"


def test_validation_never_adds_keys_to_a_cell():
    """Unset keys stay unset (the code's default applies): the payload, and the seed derived from it,
    is what the option file and the command line say."""
    for cell in cells("+exp=noise_sweep", "algorithm.kappa=2"):
        option = load_group_option("algorithm", cell.payload["algorithm"]["name"])
        expected = OmegaConf.to_container(option)
        if "kappa" in expected:
            expected["kappa"] = 2
        assert cell.payload["algorithm"] == expected
        assert "???" not in repr(cell.payload)


@pytest.mark.parametrize("bad,key", [({"n_queries": "many"}, "n_queries"), ({"n_querys": 3}, "n_querys")])
def test_the_online_session_config_refuses_a_wrong_type_or_an_unknown_key(bad, key):
    from hardware.online import OnlineConfig

    online = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "online" / "example_rat.yaml"))
    with pytest.raises(ValueError, match=re.escape(key)):
        OnlineConfig.from_dict({**online, **bad})


@pytest.mark.parametrize("bad,key", [({"latency_s": "soon"}, "latency_s"), ({"latency": 0.3}, "latency")])
def test_the_rig_config_refuses_a_wrong_type_or_an_unknown_key(bad, key):
    from hardware.rig import make_rig

    rig = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "rig" / "simulated.yaml"))
    rig["ch2xy"] = str(CONF_DIR / "rig" / "ch2xy_rat32.json")
    with pytest.raises((ValueError, TypeError), match=re.escape(key)):
        make_rig({**rig, **bad})
