"""A launch of the Optuna study: its trials in flight on Ray, the confirmed choice (opened by sweeps.tuning.opening)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuro_opt import metrics
from sweeps.schema import ConfigError
from sweeps.tuning.figures import history_figure, importance_figure, slice_figure, write_trials_table
from sweeps.tuning.heldout import (
    chosen_params,
    dataset_block,
    heldout_figure,
    heldout_groups,
    json_default,
    log_chosen,
    parallel_slots,
)
from sweeps.tuning.scoring import Scorer, per_problem, runs_of
from sweeps.tuning.setup import Setup
from sweeps.tuning.space import RATIOS, SearchSpec

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig
    from tqdm import tqdm

    from sweeps.tracking import Tracker


# =============================================================================================
# the Optuna study
# =============================================================================================
def confirm_spec(params: dict, n_reps: int) -> dict:
    """``params.confirm``: re-score the ``top_k`` best trials and the published defaults on ``reps``
    fresh replicates of the training problems; the best trial replaces the published defaults only
    if its gain over them there, paired by problem, is at least ``z`` standard errors across problems
    (``keep_published: false``:
    the best of the trials whatever; ``top_k: 0``: the best trial as is, unconfirmed)."""
    c = params.get("confirm", {}) or {}
    keys = ("top_k", "reps", "z", "keep_published")
    if not isinstance(c, dict):
        raise ConfigError(f"params.confirm must be a mapping {{{', '.join(keys)}}}, got {c!r}")
    unknown = sorted(set(c) - set(keys))
    if unknown:
        raise ConfigError(f"params.confirm: unknown key(s) {unknown}; expected {', '.join(keys)}")
    out = {
        "top_k": c.get("top_k", 5),
        "reps": c.get("reps", 2 * n_reps),
        "z": c.get("z", 1.645),
        "keep_published": c.get("keep_published", True),
    }
    z = out["z"]
    if not isinstance(z, (int, float)) or isinstance(z, bool) or not math.isfinite(z) or z < 0:
        raise ConfigError(f"params.confirm.z={z!r}: expected a number >= 0 (standard errors of the paired gain)")
    for k, lo in (("top_k", 0), ("reps", 1)):
        v = out[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"params.confirm.{k}={v!r}: expected an integer >= {lo}")
    if not isinstance(out["keep_published"], bool):
        raise ConfigError(f"params.confirm.keep_published={out['keep_published']!r}: expected true or false")
    return out


@dataclass
class _Running:
    """A trial in flight: its hyperparameters and the per-run objective of the batches done."""

    trial: optuna.Trial
    alg: dict
    sampled: dict
    step: int = 0
    values: list = field(default_factory=list)
    intermediate: list = field(default_factory=list)
    t0: float = field(default_factory=time.time)


class StudyLaunch:
    """One launch of a study: adds trials (ask, simulate on Ray, report, prune, tell), then re-scores."""

    def __init__(
        self,
        cfg: DictConfig,
        setup: Setup,
        spec: SearchSpec,
        study: optuna.Study,
        storage: str,
        created: bool,
        tracker: Tracker,
        parent: str,
        run_dir: Path,
        confirm: dict,
    ) -> None:
        self.cfg, self.setup, self.spec, self.study, self.confirm = cfg, setup, spec, study, confirm
        self.storage, self.created, self.tracker, self.parent, self.run_dir = storage, created, tracker, parent, run_dir
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.asked = 0
        self.inflight: dict = {}
        self.scorer: Scorer | None = None
        self.bar: tqdm | None = None
        self.heartbeat_s = int(cfg.study.heartbeat_s)

    # ---- trials
    def run_trials(self, n_trials: int) -> None:
        import ray
        from tqdm import tqdm

        self._scorer()
        slots = parallel_slots(self.setup, self.cfg)
        self.bar = tqdm(
            total=n_trials,
            desc=f"{self.cfg.experiment} {self.study.study_name}",
            unit="trial",
            disable=not self.cfg.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        while self.asked < n_trials and len(self.inflight) < slots:
            self._ask()
        while self.inflight:
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self.heartbeat_s)
            self._beat(*self.inflight.values())
            if not ready:
                continue
            r = self.inflight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the study
                self._close(r, "fail", error=f"{type(exc).__name__}: {exc}")
            else:
                self._advance(r, out)
            while self.asked < n_trials and len(self.inflight) < slots:
                self._ask()
        self.bar.close()

    def _scorer(self) -> "Scorer":
        if self.scorer is None:
            self.scorer = Scorer(
                self.setup, self.cfg.cluster.cpus_per_cell, self.cfg.cluster.max_retries, self.confirm["reps"]
            )
        return self.scorer

    def _ask(self) -> None:
        trial = self.study.ask()
        sampled = self.spec.suggest(trial)
        alg = self.spec.resolve(sampled)
        trial.set_user_attr("hyperparameters", alg)
        trial.set_user_attr("launch", self.run_dir.name)
        self.asked += 1
        r = _Running(trial, alg, sampled)
        assert self.scorer is not None  # run_trials made it before asking
        self.inflight[self.scorer.submit(alg, self.setup.batches[0])] = r
        self._beat(r)

    def _beat(self, *running: "_Running") -> None:
        """Record that these trials' launch is alive (see open_study: a silent one is failed later)."""
        storage = self.study._storage  # the RDBStorage open_study made, with heartbeats on
        for r in running:
            storage.record_heartbeat(r.trial._trial_id)

    def _advance(self, r: _Running, out: list) -> None:
        """A batch came back: report the running objective; finish, prune or submit the next batch."""
        by_key = {o["key"]: o for o in out}
        r.values.append(runs_of(self.setup.objective, by_key, self.setup.batches[r.step]))
        running = float(np.concatenate(r.values).mean())
        r.intermediate.append(running)
        r.trial.report(running, r.step)
        r.step += 1
        if r.step == len(self.setup.batches):
            self._close(r, "complete", value=running)
        elif r.trial.should_prune():
            self._close(r, "pruned")
        else:
            assert self.scorer is not None  # run_trials made it before the first batch went out
            self.inflight[self.scorer.submit(r.alg, self.setup.batches[r.step])] = r

    def _close(self, r: _Running, outcome: str, value: float | None = None, error: str | None = None) -> None:
        from optuna.trial import TrialState

        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[outcome]
        runs = sum(len(self.setup.batches[i]) for i in range(len(r.intermediate))) * self.setup.run["n_reps"]
        r.trial.set_user_attr("simulated_runs", runs)
        r.trial.set_user_attr("duration_s", round(time.time() - r.t0, 3))
        if value is not None:
            r.trial.set_user_attr("train_sem", metrics.value_sem(np.concatenate(r.values))[1])
        if error:
            r.trial.set_user_attr("error", error[-2000:])
        self.study.tell(r.trial, value, state=state)
        self.counts["failed" if outcome == "fail" else outcome] += 1
        tr = self.tracker
        child = tr.start(
            f"trial {r.trial.number}",
            parent=self.parent,
            params={
                **r.sampled,
                **{f"hp.{k}": v for k, v in chosen_params(r.alg).items()},
                "trial": r.trial.number,
                "launch": self.run_dir.name,
            },
            tags={"optuna.state": state.name, "optuna.study_name": self.study.study_name},
        )
        if r.intermediate:
            tr.curves(child, {"intermediate_objective": r.intermediate})
        tr.metrics(child, {"simulated_runs": runs, **({"objective": value} if value is not None else {})})
        tr.end(child, "FAILED" if outcome == "fail" else "FINISHED")
        if self.bar is not None:
            best = best_value(self.study)
            self.bar.update(1)
            self.bar.set_postfix(
                best=f"{best:.3f}" if best is not None else "-",
                pruned=self.counts["pruned"],
                failed=self.counts["failed"],
            )

    def abandon(self) -> None:
        """Interrupted: the trials in flight are told FAIL, so the study holds no trial stuck RUNNING."""
        for r in list(self.inflight.values()):
            try:
                self._close(r, "fail", error="interrupted")
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.inflight.clear()

    # ---- final choice, comparison and report
    def _candidates(self, complete: list) -> dict:
        """The ``top_k`` best completed trials with distinct hyperparameters: ``{label: trial}``."""
        out, seen = {}, set()
        for t in sorted(complete, key=lambda t: (-t.value, t.number)):
            key = json.dumps(t.user_attrs["hyperparameters"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out[f"trial {t.number}"] = t
            if len(out) == self.confirm["top_k"]:
                break
        return out

    def rescore(self) -> dict:
        """Choose (confirmation on fresh training runs), then re-score the choice and the published
        defaults on the held-out runs; the defaults also on the training runs every trial met."""
        from optuna.trial import TrialState

        scorer = self._scorer()
        setup, pub_alg = self.setup, self.setup.published
        complete = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(
                f"study {self.study.study_name!r} has no completed trial ({self.counts['failed']} "
                f"failed, {self.counts['pruned']} pruned in this launch)"
            )
        best = self.study.best_trial
        pub_train_refs = scorer.submit_all({"p": pub_alg}, "train")
        confirmation, confirm_runs = [], 0
        chosen_trial, chosen_alg = best, best.user_attrs["hyperparameters"]
        if self.confirm["top_k"] > 0:
            cands = self._candidates(complete)
            algs = {label: t.user_attrs["hyperparameters"] for label, t in cands.items()}
            algs["published_defaults"] = pub_alg
            res = scorer.evaluate(algs, "confirm")
            confirm_runs = len(algs) * len(setup.train) * self.confirm["reps"]
            scores = {label: metrics.value_sem(runs_of(setup.objective, res[label], setup.train)) for label in algs}
            # the gain of each trial over the published defaults, paired by problem (same runs, same
            # seeds), its SEM across problems: a gain must hold across subjects' maps to transfer
            probs = {label: per_problem(setup.objective, res[label], setup.train) for label in algs}
            gains = {label: metrics.value_sem(probs[label] - probs["published_defaults"]) for label in cands}
            if self.confirm["keep_published"]:
                eligible = [lb for lb in cands if gains[lb][0] > 0 and gains[lb][0] >= self.confirm["z"] * gains[lb][1]]
            else:
                eligible = list(cands)
            winner = max(eligible, key=lambda lb: scores[lb][0]) if eligible else "published_defaults"
            chosen_trial = cands.get(winner)
            chosen_alg = algs[winner]
            confirmation = [
                {
                    "label": label,
                    "trial": cands[label].number if label in cands else None,
                    "train_objective": cands[label].value if label in cands else None,
                    "confirm_objective": scores[label],
                    "gain_over_published": gains.get(label),
                    "chosen": label == winner,
                }
                for label in algs
            ]
        methods = {"optuna": chosen_alg, "published_defaults": pub_alg}
        res = scorer.evaluate(methods, "heldout")
        pub_train = metrics.value_sem(runs_of(setup.objective, Scorer.collect(pub_train_refs)["p"], setup.train))
        simulated = sum(t.user_attrs.get("simulated_runs", 0) for t in self.study.trials) + confirm_runs
        train_values = {
            "optuna": pub_train
            if chosen_trial is None
            else [float(chosen_trial.value), float(chosen_trial.user_attrs.get("train_sem", 0.0))],
            "published_defaults": pub_train,
        }
        extra = [k for k in self.spec.ranges if k not in RATIOS]
        groups, comparison = heldout_groups(
            setup, res, methods, train_values, {"optuna": simulated, "published_defaults": 0}, extra
        )
        if confirmation:  # groups[0] is the choice, groups[1] the published defaults
            groups[0]["metrics"]["confirm_objective"] = scores[winner]
            groups[1]["metrics"]["confirm_objective"] = scores["published_defaults"]
        selected = {
            "trial": None if chosen_trial is None else chosen_trial.number,
            "label": "published_defaults" if chosen_trial is None else f"trial {chosen_trial.number}",
            "hyperparameters": chosen_alg,
            "launch": self.run_dir.name,
            "mlflow_run_id": self.parent,
            "n_trials": len(self.study.trials),
            "heldout_objective": groups[0]["metrics"]["heldout_objective"],
            "published_heldout_objective": groups[1]["metrics"]["heldout_objective"],
            "train_objective": train_values["optuna"][0],
            "code_version": setup.git,
        }
        self.study.set_user_attr("selected", json.loads(json.dumps(selected, default=json_default)))
        return {
            "best": best,
            "selected": selected,
            "confirmation": confirmation,
            "methods": methods,
            "res": res,
            "train_values": train_values,
            "groups": groups,
            "comparison": comparison,
            "simulated": simulated,
            "confirm_runs": confirm_runs,
            "n_complete": len(complete),
        }

    def report(self, out: dict) -> dict:
        """Figures, the trials table and the chosen hyperparameters; returns the summary body."""
        from optuna.trial import TrialState

        study, spec, best = self.study, self.spec, out["best"]
        figs = self.run_dir / "figures"
        figs.mkdir(exist_ok=True)
        (self.run_dir / "results").mkdir(exist_ok=True)
        write_trials_table(study, spec, self.run_dir / "results" / "trials.parquet")
        history_figure(
            study,
            out["train_values"]["published_defaults"][0],
            figs / "optimization_history.png",
            out["selected"]["trial"],
        )
        importances = importance_figure(study, figs / "param_importances.png")
        slice_figure(study, spec, figs / "slices.png")
        heldout_figure(self.setup, out["res"], figs / "heldout_curves.png")
        sel = out["selected"]
        search = {
            "kind": "optuna",
            "study_name": study.study_name,
            "storage": self.storage,
            "trial": sel["trial"],
            "selected": sel["label"],
            "best_trial": best.number,
            "n_trials": len(study.trials),
            "confirm": self.confirm,
            "space": spec.describe(),
        }
        groups = out["groups"]
        log_chosen(
            self.tracker,
            self.parent,
            "optuna",
            out["methods"]["optuna"],
            self.setup,
            groups[0],
            groups[1],
            search,
            extra={"trial": sel["trial"], "study_name": study.study_name, "storage": self.storage},
        )
        self.tracker.metrics(
            self.parent,
            {
                "best_value": best.value,
                "n_trials": len(study.trials),
                "n_complete": out["n_complete"],
                **{f"launch_{k}": v for k, v in self.counts.items()},
            },
        )
        states = [t.state for t in study.trials]
        summary = {
            "study": {
                "name": study.study_name,
                "storage": self.storage,
                "resumed": not self.created,
                "n_trials": len(study.trials),
                "n_complete": states.count(TrialState.COMPLETE),
                "n_pruned": states.count(TrialState.PRUNED),
                "n_failed": states.count(TrialState.FAIL),
                "launch_trials": self.asked,
                "launch_counts": self.counts,
                "best_trial": best.number,
                "best_value": best.value,
                "best_params": best.params,
                "space": spec.describe(),
                "simulated_runs": out["simulated"],
                "confirm": self.confirm,
                "confirm_runs": out["confirm_runs"],
                "confirmation": out["confirmation"],
                "selected": {k: sel[k] for k in ("label", "trial")},
                "importances": importances,
            },
            "dataset": dataset_block(self.setup),
            "groups": groups,
            "comparison": out["comparison"],
        }
        return summary


def best_value(study):
    try:
        return study.best_value
    except ValueError:
        return None
