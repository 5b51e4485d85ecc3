"""Experiment kinds: what a cell runs and how its results are reported.

A kind is a module-level object with:

* ``payload_keys``: the config keys a cell needs (its content, hashed into its key);
* ``seed_key(payload) -> str`` (optional): what the cell's random stream hashes with the global
  seed, when that is less than the whole payload (default: the cell key);
* ``problem_keys(cfg) -> list[str] | None``: dataset problems to expand ``muscle: all`` over;
* ``validate(cfg, cells)``: raise ConfigError before any work starts;
* ``run_cell(payload, seed_sequence, data) -> pyarrow.Table``: runs in a Ray task;
* ``report(cfg, table, run_dir, tracker, parent_run, axes) -> dict``: groups and extras for summary.json.

A kind that is not a grid of independent cells (an online session, an Optuna study)
instead defines ``drive(cfg, overrides, run_dir, t0) -> Path``, which does the whole
launch itself and returns the path of ``summary.json`` (printed last).
"""

from __future__ import annotations

import importlib

from sweeps.schema import ConfigError

KINDS = {
    "optimization": "sweeps.kinds.optimization",
    "latency": "sweeps.kinds.latency",
    "throughput": "sweeps.kinds.throughput",
    "tbfm": "sweeps.kinds.tbfm",
    "online": "sweeps.online",
    "tune": "sweeps.kinds.tune",
    "calibration": "sweeps.kinds.calibrate",
    "hierarchical": "sweeps.kinds.hierarchical",
    "continual": "sweeps.kinds.continual",
}


def get(name: str):
    try:
        return importlib.import_module(KINDS[name]).KIND
    except KeyError:
        raise ConfigError(f"kind={name!r} is not a known experiment kind; known: {', '.join(sorted(KINDS))}") from None
