"""``python -m sweeps.launch +exp=tune_gpbo``: an Optuna study of GP-BO hyperparameters, trials on Ray.

The published way to calibrate GP-BO (STAR Protocols steps 10-12 and 57-61) is a hand loop
over value lists, one hyperparameter at a time (``+exp=kappa_calibration``,
:mod:`sweeps.kinds.calibrate`). This kind runs the same calibration as an Optuna study:

* The search space is ``params.space``: ``{hyperparameter: {low, high, log, int} | {choices}}``
  over the keys of the ``algorithm`` config (anything not searched stays at its value
  there). The bound pairs are searched as their upper bound and a ratio, so that
  ``rho_low < rho_high``, ``noise_min < noise_max`` and ``outputscale_low < outputscale_high``
  hold in every trial: ``rho_low = rho_high / rho_ratio``, ``noise_min = noise_max / noise_ratio``
  and ``outputscale_low = outputscale_high / outputscale_ratio`` (ratios > 1).
* A trial is scored by simulated GP-BO runs on the dataset's *training* subjects: every
  training problem (``subject/muscle``) x ``n_reps`` replicates, one batched
  :func:`neuro_opt.simulate.simulate` call per problem. The objective
  (``params.objective``) is computed per run and averaged.
* Trials run in parallel as Ray tasks (Optuna ask/tell, driven here): ``params.parallel``
  trials are in flight; each trial's problems are split into batches of
  ``params.batch_problems``; after each batch the running objective is reported to Optuna
  and the pruner may stop the trial.
* Seeds: each run's generator derives with numpy ``SeedSequence`` from (global ``seed``, a
  stable hash of the run's content: dataset, problem, replicates, queries, noise). The hash
  leaves the hyperparameters out on purpose: every trial meets the same random first
  queries and response draws (common random numbers), so trials differ only by their
  hyperparameters, and a trial's score does not depend on the number of workers.
* The study lives in an Optuna RDB storage (``study.storage``; default: ``optuna.db`` in the
  run folder, and a named study is looked up in the experiment's other run folders). A
  launch with an existing ``study.name`` adds ``params.n_trials`` trials to it (it must have
  been created with the same dataset, split, replicates, objective and space); the published
  defaults and ``params.start`` points are enqueued when the study is created.
* The choice (``params.confirm``): the best trial's training score is biased upward (it won
  on those very runs), so the ``top_k`` best trials and the published defaults are re-scored
  on fresh replicates of the training problems (a seed stream no trial saw). The best of the
  trials whose gain over the published defaults there, paired by problem, is at least ``z``
  standard errors across problems is chosen; if none is, the published defaults stay the
  choice (a gain on some maps that does not hold across problems does not transfer to new
  subjects).
* The choice and the published defaults (``params.published``) are then re-scored on the
  held-out subjects, on the same runs (same seeds).

``summary.json`` holds one group per method (``params.method``: ``optuna`` and
``published_defaults``) with ``heldout_objective``, ``train_objective``, ``confirm_objective``
and ``simulated_runs`` (runs spent on training subjects to choose the values: trials and
confirmation; 0 for the published defaults) as ``[value, sem]``, and the chosen values under
``params``; ``study.confirmation`` lists the candidates and ``study.selected`` the winner.
MLflow gets a parent run for the launch, a nested run per trial, the figures (optimization
history, parameter importances, slice plots, held-out curves) and the trials table
(``results/trials.parquet``). ``python -m sweeps.promote`` turns the result into an online
config.

The parts (search space, setup, the Ray scorer, the study, the held-out comparison, the
figures) live in :mod:`sweeps.tuning`, shared with :mod:`sweeps.kinds.calibrate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sweeps.experiment import DriveExperiment
from sweeps.schema import ConfigError, Interrupted
from sweeps.tuning.opening import make_pruner, make_sampler, open_study, start_points
from sweeps.tuning.setup import int_param, prepare
from sweeps.tuning.space import TUNE_PARAMS, SearchSpec
from sweeps.tuning.study import StudyLaunch, confirm_spec

if TYPE_CHECKING:
    from sweeps.run import Run


def drive(run: Run) -> dict:
    """kind=tune: validate everything, open the study, run trials, re-score, report."""
    import optuna
    from optuna.trial import TrialState

    cfg, run_dir = run.cfg, run.dir
    setup = prepare(cfg, run.overrides, "tune", TUNE_PARAMS)
    n_trials = int_param(setup.params, "n_trials", 0, 20)
    spec = SearchSpec(
        setup.params.get("space"),
        setup.base,
        setup.run["n_queries"] or min(setup.dataset[k].space.n_points for k in setup.train),
    )
    start_points(setup, spec)  # validated before any work
    confirm = confirm_spec(setup.params, setup.run["n_reps"])
    pruner = make_pruner(setup.params.get("pruner"))
    make_sampler(setup.params.get("sampler"), 0)

    # the sampler's seed also depends on how many trials the study already has, so a resumed
    # study does not replay the random startup points of its first launch
    def sampler(n: int):
        seed = int(np.random.SeedSequence([setup.seed, n]).generate_state(1)[0])
        return make_sampler(setup.params.get("sampler"), seed)

    if cfg.resume and cfg.study.storage is None and not (run_dir / "optuna.db").is_file():
        raise ConfigError(
            f"resume={cfg.resume}: no optuna.db in that folder; a study is resumed with "
            f"study.name=NAME (and study.storage=URL when it is not in a run folder)"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir.mkdir(parents=True, exist_ok=True)
    study, storage, created = open_study(cfg, setup, spec, run_dir, sampler(0), pruner)
    if n_trials == 0 and not any(t.state == TrialState.COMPLETE for t in study.trials):
        raise ConfigError(
            f"params.n_trials=0 and study {study.study_name!r} has no finished trial: nothing to re-score"
        )
    if study.trials:
        study.sampler = sampler(len(study.trials))
    with run.ray():
        run.open_parent(
            f"{cfg.experiment} {study.study_name}",
            tags={
                "optuna.study_name": study.study_name,
                "optuna.storage": storage,
                "neuro_opt.kind": "tune",
                "git_commit": setup.git,
                "optuna.resumed": str(not created),
            },
        )
        launch = StudyLaunch(
            cfg, setup, spec, study, storage, created, run.tracker, run.require_parent(), run_dir, confirm
        )
        try:
            launch.run_trials(n_trials)
            out = launch.rescore()
        except KeyboardInterrupt:
            launch.abandon()
            raise Interrupted(
                f"interrupted; finished trials are in study {study.study_name!r} ({storage}); relaunch "
                f"with study.name={study.study_name} study.storage={storage} to continue"
            ) from None
        except BaseException:
            launch.abandon()
            raise
    return launch.report(out)


class TuneKind(DriveExperiment):
    """kind=tune: an Optuna study of GP-BO's hyperparameters (``+exp=tune_gpbo``)."""

    def drive(self, run: Run) -> dict:
        return drive(run)


KIND = TuneKind()
