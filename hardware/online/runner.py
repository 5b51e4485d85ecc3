"""Run or resume an online session from an online config and a rig config (:func:`run_online`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from hardware.journal import Journal, to_jsonable
from hardware.online.config import JOURNAL_NAME, OnlineConfig, StimulationPlan, plain
from hardware.online.core import check_resumable, new_session_id, start_journal
from hardware.online.session import OnlineSession, confirmation, resolve_mode


def _journal_path(resume: str | Path) -> Path:
    p = Path(resume)
    return p / JOURNAL_NAME if p.is_dir() else p


def ensure_ray(rig_cfg: Mapping, address: str | None = None) -> None:
    """Connect to Ray at ``address``, or start a local Ray offering the rig's resource."""
    import ray

    from hardware.actor import actor_options
    from hardware.local_ray import init_local

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        init_local(
            num_cpus=1, resources={actor_options(rig_cfg)["resource"]: 1}, include_dashboard=False, log_to_driver=False
        )


def run_online(
    online: Mapping | OnlineConfig | str | Path,
    rig: Mapping,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    mode: str | None = None,
    n_queries: int | None = None,
    use_actor: bool = True,
    ray_address: str | None = None,
    tracker=None,
    confirm: Callable[[str], str] | None = None,
    echo: Callable[[str], None] = print,
    make_optimizer: Callable | None = None,
) -> dict:
    """Run (or resume) an online session; returns the summary also written to ``session.json``.

    Args:
        online: the online config (mapping, :class:`OnlineConfig` or YAML path).
        rig: the rig config (``conf/rig/*.yaml`` as a mapping).
        run_dir: the session folder (default ``runs/online/<name>-<time>``);
            ignored when resuming (the journal's folder is used).
        resume: a session folder or journal to continue.
        mode, n_queries: override the online config's.
        use_actor: stimulate through the pinned Ray actor (False: in-process rig).
        ray_address: Ray to connect to when not initialized (None: a local Ray
            offering the rig resource).
        tracker: optional, ``log_query(record)`` and ``log_summary(summary, artifacts)`` (MLflow).
        confirm: operator prompt function (default: Enter on the terminal; see :func:`confirmation`).
        echo: progress printer.
        make_optimizer: optimizer factory (default ``neuro_opt.algorithms.make``).
    """
    from hardware.actor import open_rig_session

    if isinstance(online, OnlineConfig):
        cfg = OnlineConfig.from_dict(online.to_dict())
    elif isinstance(online, (str, Path)):
        cfg = OnlineConfig.load(online)
    else:
        cfg = OnlineConfig.from_dict(plain(online))
    cfg.mode = resolve_mode(cfg.mode, mode)
    if n_queries is not None:
        cfg.n_queries = int(n_queries)
    cfg.validate()
    confirm = confirmation(cfg.mode, confirm)  # operator mode with nobody to confirm: refused before anything
    rig_cfg = plain(rig)
    if cfg.electrode_dims and rig_cfg.get("ch2xy") is None:
        raise ValueError("rig.ch2xy is required: the online space has electrode dimensions")

    journal = None
    if resume is not None:
        journal = Journal.open(_journal_path(resume))
        session_id = journal.header["session_id"]
        run_dir = journal.path.parent
    else:
        session_id = new_session_id(cfg.name)
        run_dir = Path(run_dir) if run_dir is not None else Path("runs") / "online" / session_id
    try:
        if use_actor:
            ensure_ray(rig_cfg, ray_address)
        rig_session = open_rig_session(rig_cfg, session_id, use_actor=use_actor, echo=echo)
        plan = StimulationPlan.for_rig(cfg, rig_cfg, rig_session.limits)
        plan.preflight()
        if journal is not None:
            check_resumable(journal.header, cfg, plan)
        else:
            rig_info = {"name": rig_session.name, "kind": rig_session.kind, "muscles": list(rig_session.muscles)}
            journal = start_journal(
                run_dir,
                session_id,
                cfg,
                plan,
                {**rig_info, "config": to_jsonable(rig_cfg)},
                "operator" if confirm is not None else "none",
            )
        session = OnlineSession(
            cfg,
            plan,
            rig_session,
            journal,
            run_dir,
            make_optimizer=make_optimizer,
            confirm=confirm,
            tracker=tracker,
            echo=echo,
        )
        return session.run()
    finally:
        if journal is not None:
            journal.close()
