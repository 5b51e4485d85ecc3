"""The two interfaces an experiment implements; :mod:`sweeps.runner` owns everything else.

* :class:`Experiment`: a grid of independent cells. The runner expands the grid, validates the
  cells, runs each as a Ray task, keeps each cell's Arrow table as Parquet, and calls ``report``
  on the whole table. Simulated optimization, TBFM and latency are experiments.
* :class:`DriveExperiment`: an experiment that is not a grid of independent cells (an Optuna
  study, a one-at-a-time calibration, an online session, the throughput benchmark of the whole
  machine). It drives its own work inside the
  runner's :class:`~sweeps.run.Run`, which owns the MLflow parent run, Ray, the run folder and
  ``summary.json``.

A new experiment is one module holding a subclass and one YAML file under ``conf/exp`` whose
``kind`` names it: ``kind: NAME`` finds ``sweeps.kinds.NAME``'s ``KIND`` (or a built-in alias in
``sweeps.kinds.KINDS``), and ``kind: package.module:Class`` any importable class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # the interfaces only name these types
    import numpy as np
    import pyarrow as pa
    from omegaconf import DictConfig

    from sweeps.grid import Cell
    from sweeps.run import Run
    from sweeps.tracking import Tracker


class Experiment(ABC):
    """A grid of independent cells, each a pure function of its payload and seed.

    Attributes:
        payload_keys: the config keys a cell needs; their values are the cell's content and are
            hashed into its key (so ``resume=`` recognizes a finished cell).
    """

    payload_keys: tuple[str, ...] = ("kind", "seed")

    def problem_keys(self, cfg: DictConfig) -> list[str] | None:
        """The dataset problems that ``muscle: all`` expands over (None: the experiment has none)."""
        return None

    def seed_key(self, payload: dict) -> str:
        """What the cell's random stream hashes with the global seed ("": the whole cell key)."""
        return ""

    def validate(self, cfg: DictConfig, cells: Sequence[Cell]) -> None:
        """Raise :class:`~sweeps.schema.ConfigError` naming the key, the value and what is expected,
        before any work starts."""

    def data_for(self, payload: dict) -> Any:
        """Driver-side data a cell reads (put in Ray's object store once per dataset and problem)."""
        return None

    def batch_key(self, payload: dict, data: Any) -> str | None:
        """Cells with one key may run together in one task (:meth:`run_batch`), of at most about
        ``cluster.batch_reps`` replicates; None: the cell runs alone."""
        return None

    def batch_size(self, payload: dict) -> int:
        """What a cell counts towards ``cluster.batch_reps`` (its replicates)."""
        return 1

    def run_batch(self, payloads: list[dict], seed_sequences: list, data: list) -> list[pa.Table]:
        """Run cells of one batch key in one task; each table must be the one :meth:`run_cell` gives."""
        return [self.run_cell(p, s, d) for p, s, d in zip(payloads, seed_sequences, data)]

    @abstractmethod
    def run_cell(self, payload: dict, seed_sequence: np.random.SeedSequence, data: Any) -> pa.Table:
        """Run one cell inside a Ray task; returns its rows (any schema the report reads)."""

    @abstractmethod
    def report(
        self,
        cfg: DictConfig,
        table: pa.Table,
        run_dir: Path,
        tracker: Tracker | None,
        parent_run: str | None,
        axes: dict,
    ) -> dict:
        """Summary groups, findings and figures from the whole results table.

        Args:
            table: every finished cell's rows, with ``cell_key`` and one column per grid axis.
            tracker, parent_run: MLflow, for child runs and figures; None when ``sweeps.report``
                remakes the summary of a finished run.
            axes: grid key -> values, in grid order.

        Returns:
            what goes into ``summary.json`` beside the runner's own keys (``groups`` at least).
        """


class DriveExperiment(ABC):
    """An experiment that runs its own loop inside the runner's lifecycle."""

    @abstractmethod
    def drive(self, run: Run) -> dict:
        """Do the experiment's work; returns the body of ``summary.json`` (``groups`` at least).

        ``run`` holds the composed config (``run.cfg``), the command-line overrides, the run folder,
        the MLflow parent run (``run.open_parent``) and Ray (``run.ray()``). Raise
        :class:`~sweeps.schema.LaunchError` subclasses for failures the user can act on.
        """
