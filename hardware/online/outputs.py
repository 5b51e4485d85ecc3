"""What a session leaves behind: ``estimated_map.json``, the figures and ``session.json``.

Functions of a :class:`~hardware.online.core.SessionCore`, read from its journal.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from hardware.journal import to_jsonable


def write_outputs(
    core,
    run_dir: Path,
    *,
    rig: dict,
    confirmation: str,
    paused: bool = False,
    stopped: str | None = None,
    tracker=None,
    artefact_min_snr: float | None = None,
    echo=print,
    draw: Callable[[dict, Path], list[str]] | None = None,
) -> dict:
    """Write the estimated map, figures and ``session.json`` of a session; return the summary.

    Args:
        core: the session's :class:`~hardware.online.core.SessionCore`.
        run_dir: the session folder.
        rig: ``{name, kind}`` of the rig it stimulated through.
        confirmation: ``operator`` or ``none``.
        tracker: optional, ``log_summary(summary, artifacts)``.
        artefact_min_snr: the dry run's artefact threshold (dry-run mode only).
        draw: draws the figures from :func:`figure_data` (default :func:`draw_figures` here;
            the session service hands it to a drawing process).

    ``n_stimulations`` counts the triggers that were sent (a trial, or no valid response);
    ``n_maybe_delivered`` those whose fate is unknown; ``n_not_sent`` the failures before a trigger.
    """
    session = core
    run_dir = Path(run_dir)
    draw = draw or draw_figures
    queries = session.journal.of_kind("query")
    trials = session.journal.of_kind("trial")
    est = session.estimate() if queries else np.full(session.P, np.nan)
    best = queries[-1]["best_point"] if queries else None
    emap = {
        "session_id": session.journal.header["session_id"],
        "target_muscle": session.cfg.target_muscle,
        "dims": list(session.space.names),
        "electrode_dims": list(session.cfg.electrode_dims),
        "points": [list(session.plan.coords(p).values()) for p in range(session.P)],
        "mean": [float(v) if math.isfinite(v) else None for v in est],
        "n_queries": len(queries),
    }
    _atomic_write(run_dir / "estimated_map.json", json.dumps(emap, indent=1))
    figures = draw(figure_data(session, queries, est), run_dir) if queries else []
    summary = {
        "session_id": session.journal.header["session_id"],
        "name": session.cfg.name,
        "mode": session.cfg.mode,
        "confirmation": confirmation,
        "rig": {"name": rig["name"], "kind": rig["kind"]},
        "run_dir": str(run_dir),
        "journal": str(session.journal.path),
        "paused": paused,
        "stopped": stopped,
        "n_queries": len(queries),
        "n_stimulations": len(trials) + len(session.journal.of_kind("no_response")),
        "n_maybe_delivered": len(session.journal.of_kind("maybe_delivered", "lost")),
        "n_not_sent": len(session.journal.of_kind("not_sent")),
        "n_invalid": sum(not q["valid"] for q in queries),
        "best": None
        if best is None
        else {
            "point": best,
            "coords": session.plan.coords(best),
            "channel": session.plan.params(best).channel,
            "estimate": queries[-1]["exploration"],
        },
        "exploration_final": queries[-1]["exploration"] if queries else None,
        "exploitation_final": queries[-1]["exploitation"] if queries else None,
        "replay_mismatches": session.replay_mismatches,
        "figures": figures,
        "estimated_map": str(run_dir / "estimated_map.json"),
    }
    if session.cfg.mode == "dry_run" and artefact_min_snr is not None:
        thr = artefact_min_snr
        seen: dict[int, float] = {}
        for t in trials:
            ch = int(t["params"]["channel"])
            seen[ch] = max(seen.get(ch, 0.0), float(t["artefact_snr"] or 0.0))
        missing = sorted(ch for ch, snr in seen.items() if snr < thr)
        summary["dry_run"] = {
            "ok": bool(seen) and not missing,
            "channels_tested": sorted(seen),
            "channels_without_artefact": missing,
            "artefact_min_snr": thr,
        }
        echo(
            f"dry run: stimulation artefact {'present on every' if not missing else 'MISSING on'} "
            f"channel{'' if not missing else 's ' + str(missing)} of {len(seen)} tested"
        )
    _atomic_write(run_dir / "session.json", json.dumps(to_jsonable(summary), indent=1))
    if tracker is not None and hasattr(tracker, "log_summary"):
        tracker.log_summary(
            summary, [run_dir / "estimated_map.json", session.journal.path, *[Path(f) for f in figures]]
        )
    return summary


def figure_data(session, queries: list[dict], est: np.ndarray) -> dict:
    """What :func:`draw_figures` draws, as plain values (it can be sent to another process)."""
    ax_e = list(session.plan.electrode_axes)
    b = queries[-1]["best_point"] if queries else None
    return {
        "name": session.cfg.name,
        "target_muscle": session.cfg.target_muscle,
        "grid": session.space.to_grid(est),
        "electrode_axes": ax_e,
        "dims": [(d.name, [str(v) for v in d.values]) for d in session.space.dims],
        "best_index": None if b is None else [int(i) for i in session.space.index[b]],
        "queries": [{k: r[k] for k in ("query", "exploration", "response", "exploitation")} for r in queries],
    }


def draw_figures(data: dict, run_dir: Path) -> list[str]:
    """``figures/estimated_map.png`` (two electrode dimensions) and ``figures/performance.png``
    from :func:`figure_data`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    d = Path(run_dir) / "figures"
    d.mkdir(exist_ok=True)
    out = []
    queries, name, muscle = data["queries"], data["name"], data["target_muscle"]
    # estimated map over the electrode grid (max over any other dimension)
    grid, ax_e = data["grid"], data["electrode_axes"]
    if len(ax_e) == 2:
        other = tuple(i for i in range(grid.ndim) if i not in ax_e)
        with np.errstate(all="ignore"):
            g = np.nanmax(grid, axis=other) if other else grid
            if ax_e[0] > ax_e[1]:
                g = g.T
        fig, ax = plt.subplots(figsize=(5, 4))
        (nx, vx), (ny, vy) = data["dims"][ax_e[0]], data["dims"][ax_e[1]]
        im = ax.imshow(
            g.T, origin="lower", cmap="viridis", aspect="auto", extent=(-0.5, len(vx) - 0.5, -0.5, len(vy) - 0.5)
        )
        ax.set_xticks(range(len(vx)), vx)
        ax.set_yticks(range(len(vy)), vy)
        ax.set_xlabel(nx)
        ax.set_ylabel(ny)
        gi = data["best_index"]
        if gi is not None:
            ax.plot(gi[ax_e[0]], gi[ax_e[1]], "r*", ms=14, label="believed best")
            ax.legend(loc="upper right", fontsize=7)
        fig.colorbar(im, ax=ax, label=f"{muscle} estimated response")
        ax.set_title(f"{name}: estimated map after {len(queries)} queries")
        out.append(_save(plt, fig, d / "estimated_map.png"))
    fig, axs = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    x = [r["query"] + 1 for r in queries]
    axs[0].plot(
        x,
        [np.nan if r["exploration"] is None else r["exploration"] for r in queries],
        "-o",
        ms=3,
        label="exploration (estimate at believed best)",
    )
    axs[0].scatter(
        x, [np.nan if r["response"] is None else r["response"] for r in queries], s=10, c="k", label="response"
    )
    axs[0].set_ylabel(f"{muscle} response")
    axs[0].legend(fontsize=7)
    axs[1].plot(
        x, [np.nan if r["exploitation"] is None else r["exploitation"] for r in queries], "-o", ms=3, color="C1"
    )
    axs[1].set_ylabel("exploitation")
    axs[1].set_xlabel("query")
    axs[1].set_ylim(bottom=0)
    fig.suptitle(f"{name}: performance without ground truth")
    out.append(_save(plt, fig, d / "performance.png"))
    return out


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
