"""``python -m sweeps.launch +exp=online``: one online session on the rig, through the pinned Ray actor.

The session itself (safety checks, journal, resume, EMG processing) is
``hardware.online.run_online``; this module adds the launcher's contracts: the
config from Hydra and every query logged to MLflow as it is journaled. The runner
writes ``summary.json`` into the session's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.experiment import DriveExperiment
from sweeps.schema import ConfigError, LaunchError, as_dict
from sweeps.tracking import Tracker

if TYPE_CHECKING:
    from sweeps.run import Run

ROOT = Path(__file__).resolve().parent.parent


class OnlineTracker:
    """The ``log_query`` / ``log_summary`` interface hardware.online calls, on MLflow."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def log_query(self, record: dict) -> None:
        values = {
            k: record[k]
            for k in ("response", "exploration", "exploitation")
            if isinstance(record.get(k), (int, float)) and record[k] == record[k]
        }
        # journal queries are 0-based; MLflow steps are 1-based queries, as in the offline curves
        self.tracker.metrics(self.run_id, values, step=int(record.get("query", 0)) + 1)

    def log_summary(self, summary: dict, artifacts) -> None:
        for path in artifacts or []:
            if Path(path).exists():
                self.tracker.artifacts(self.run_id, path)


def _resolve_paths(rig: dict) -> dict:
    """Relative file paths in the rig config are relative to the repository, wherever the launch runs."""
    for key in ("ch2xy",):
        val = rig.get(key)
        if isinstance(val, str) and not Path(val).is_absolute() and not Path(val).exists() and (ROOT / val).exists():
            rig[key] = str(ROOT / val)
    return rig


class OnlineKind(DriveExperiment):
    """kind=online: one session on the rig; the runner owns the MLflow run and summary.json."""

    def drive(self, run: Run) -> dict:
        from hardware.journal import JournalError
        from hardware.online import OnlineConfig, SessionStopped, confirmation, error_text, resolve_mode, run_online
        from hardware.rig import RigError

        cfg = run.cfg
        if cfg.online is None or cfg.rig is None:
            raise ConfigError("kind=online needs an online config and a rig: use +exp=online (online=NAME rig=NAME)")
        online = as_dict(cfg.online, "online")
        rig = _resolve_paths(as_dict(cfg.rig, "rig"))
        try:  # the mode in force, and the confirmation it requires, before anything starts
            mode = resolve_mode(OnlineConfig.from_dict(online).mode, cfg.mode)
            confirm = confirmation(mode)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        run.open_parent(
            f"online {online.get('name', '')} {run.dir.name}", params={"online": online, "rig": rig, "mode": mode}
        )
        try:
            session = run_online(
                online,
                rig,
                run_dir=run.dir,
                resume=cfg.resume,
                mode=mode,
                confirm=confirm,
                n_queries=cfg.n_queries,
                use_actor=True,
                ray_address=cfg.cluster.address,
                tracker=OnlineTracker(run.tracker, run.require_parent()),
            )
        except SessionStopped as exc:
            raise LaunchError(
                f"{exc}; session folder {exc.run_dir}; resume: the same command with resume={exc.run_dir}"
            ) from None
        except (ValueError, FileNotFoundError, RigError, JournalError) as exc:
            raise ConfigError(error_text(exc) if isinstance(exc, RigError) else str(exc)) from None
        run.dir = Path(session.get("run_dir", run.dir))
        metrics = {
            k: [float(v), 0.0] for k, v in session.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return {
            "groups": [
                {
                    "params": {"online": online.get("name"), "mode": session["mode"]},
                    "n": int(session.get("n_queries", 0) or 0),
                    "metrics": metrics,
                }
            ],
            "session": session,
        }


KIND = OnlineKind()
