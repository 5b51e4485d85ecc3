"""``python -m sweeps.dataset describe|plot`` on every dataset config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeps import dataset as cli

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"n_subjects", "muscles", "n_points", "grid_shape", "n_repetitions", "valid_fraction", "max_response"}
NEEDS_PATH = {"neuromosaics_nhp", "neuromosaics_rat", "neuromosaics_spinal", "rat_5d", "lab_table"}
GENERATOR_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml") if p.stem not in NEEDS_PATH)


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_describe_prints_the_summary(capsys):
    code, out, _ = run(capsys, "describe", "dataset=synthetic_rat", "dataset.n_subjects=1", "dataset.n_muscles=3")
    assert code == 0
    info = json.loads(out)
    assert REQUIRED <= set(info)
    assert info["n_subjects"] == 1 and info["muscles"] == ["TA", "EDL", "GM"]
    assert info["n_points"] == 32 and info["grid_shape"] == [8, 4] and info["n_repetitions"] == [20, 20]
    assert 0.5 < info["valid_fraction"] < 1.0 and info["max_response"] > 0


@pytest.mark.parametrize("config", GENERATOR_CONFIGS)
def test_every_generator_config_describes(capsys, config):
    code, out, err = run(capsys, "describe", f"dataset={config}")
    assert code == 0, err
    info = json.loads(out)
    assert REQUIRED <= set(info) and info["n_subjects"] >= 1 and info["max_response"] > 0
    expected_points = {"gamma4d": 2401, "prior6d": 76832, "spinal4d": 672, "cortical5d": 10976,
                       "synthetic_nhp": 96, "synthetic_spinal": 60, "rat_frequency": 160}
    if config in expected_points:
        assert info["n_points"] == expected_points[config]


def test_describe_a_recorded_folder(tmp_path, capsys):
    pd.DataFrame({"x": [1, 1, 2, 2, 1], "y": [1, 2, 1, 2, 1], "muscle": ["TA"] * 5,
                  "response": [0.5, 0.25, 1.5, 2.0, 0.75], "valid": [1, 1, 1, 1, 0]}).to_csv(tmp_path / "r1.csv",
                                                                                        index=False)
    code, out, err = run(capsys, "describe", "dataset=lab_table", f"dataset.path={tmp_path}")
    assert code == 0, err
    info = json.loads(out)
    assert info["n_points"] == 4 and info["n_repetitions"] == [1, 2] and info["valid_fraction"] == 0.8
    assert info["max_response"] == 2.0 and info["muscles"] == ["TA"]


def test_errors_name_the_problem(capsys):
    code, _, err = run(capsys, "describe", "dataset=synthetic_nhp", "dataset.n_muscle=2")
    assert code == 2 and "unknown key(s) ['n_muscle']" in err
    code, _, err = run(capsys, "describe", "dataset=neuromosaics_nhp")
    assert code == 2 and "dataset.path is required" in err
    code, _, err = run(capsys, "describe", "dataset=no_such_dataset")
    assert code == 2 and "no dataset config" in err and "synthetic_nhp" in err
    code, _, err = run(capsys, "summarize", "dataset=synthetic_nhp")
    assert code == 2 and "describe" in err
    code, _, err = run(capsys, "describe", "algorithm=gpbo")
    assert code == 2 and "unexpected argument 'algorithm=gpbo'" in err


def test_plot_saves_heatmaps_per_subject(tmp_path, capsys):
    code, out, err = run(capsys, "plot", "dataset=synthetic_spinal", "dataset.n_subjects=2", "dataset.n_muscles=3",
                          "--out", str(tmp_path))
    assert code == 0, err
    files = json.loads(out)["figures"]
    assert len(files) == 2
    for f in files:
        data = Path(f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    code, out, err = run(capsys, "plot", "dataset=gamma4d", "dataset.n_subjects=1", f"--out={tmp_path / 'g'}")
    assert code == 0, err
    assert [Path(f).name for f in json.loads(out)["figures"]] == ["gamma_smoothness_gamma1.png"]


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "sweeps.dataset", "describe", "dataset=spinal4d",
                           "dataset.n_subjects=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["n_points"] == 672 and info["grid_shape"] == [2, 6, 8, 7] and info["muscles"] == ["step_height"]
