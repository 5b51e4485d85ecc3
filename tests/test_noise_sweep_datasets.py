"""noise_sweep composes, validates and runs a cell on every generator-backed dataset."""

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from sweeps import runner
from sweeps.grid import CONF_DIR

DATASETS = ["synthetic_nhp", "synthetic_rat", "synthetic_spinal", "gamma4d", "prior6d", "spinal4d", "cortical5d",
            "rat_frequency", "nonstationary_drift", "nonstationary_plasticity", "nonstationary_electrode_loss"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_noise_sweep_runs_on_dataset(dataset):
    overrides = ["+exp=noise_sweep", f"dataset={dataset}", "n_reps=2", "n_queries=6", "grid.noise=[0.2]",
                 "grid.algorithm=[gpbo,extensive,greedy]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    kind, cells = runner.build_cells(cfg, overrides)
    assert len(cells) >= 3 and {c.coords["algorithm"] for c in cells} == {"gpbo", "extensive", "greedy"}
    for cell in cells[:3]:
        table = kind.run_cell(cell.payload, cell.seed_sequence(0), kind.data_for(cell.payload))
        assert table.num_rows == 2 * 6
        explore = np.array(table["exploration"].to_pylist())
        assert np.all((explore >= 0) & (explore <= 1))
