"""``+exp=serve_load``: the session service under many concurrent sessions.

It starts ``python -m hardware.serve`` on a free loopback port (its own folder under the run),
then for each count in ``params.sessions`` drives that many sessions at once over HTTP
(:func:`hardware.serve.load.drive_sessions`: one client thread per session, each answering its
own simulated subject until its ``n_queries`` are done) and, as the reference, the same sessions
through the session core in this process with no server (:func:`hardware.serve.load.in_process`).
Rounds (``params.rounds``) repeat every count in turn; a count's figure is its best round
(highest requests/s, lowest latency percentiles), with every round beside it.

Summary: ``groups`` per session count (requests/s, queries/s, ask and tell latency p50/p99 in
ms, completed sessions, errors), ``reference`` (in-process ms per ask and tell), ``ratios`` (HTTP
over in-process per query), ``decisions`` (every HTTP session asked the same points as its
in-process twin) and ``figures/serve_load.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sweeps.experiment import DriveExperiment
from sweeps.schema import ConfigError, as_dict

if TYPE_CHECKING:
    from sweeps.run import Run

PARAMS = ("sessions", "rounds", "online", "rig", "n_queries", "algorithm")


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class ServeLoadKind(DriveExperiment):
    """kind=serve_load (``+exp=serve_load``)."""

    def plan(self, cfg) -> tuple[dict, dict, dict]:
        """The params, the online config and the rig config, validated before anything starts."""
        import yaml

        from hardware.online.config import OnlineConfig, StimulationPlan
        from hardware.rig import resolve_path
        from hardware.safety import SafetyLimits

        p = as_dict(cfg.params, "params")
        unknown = sorted(set(p) - set(PARAMS))
        missing = [k for k in PARAMS if k not in p]
        if unknown or missing:
            raise ConfigError(
                f"params: {'unknown key(s) ' + str(unknown) if unknown else 'missing ' + str(missing)} for "
                f"kind=serve_load; see conf/exp/serve_load.yaml"
            )
        s = p["sessions"]
        if not isinstance(s, list) or not s or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in s):
            raise ConfigError(f"params.sessions={s!r}: expected a list of session counts >= 1")
        for k in ("rounds", "n_queries"):
            if isinstance(p[k], bool) or not isinstance(p[k], int) or p[k] < 1:
                raise ConfigError(f"params.{k}={p[k]!r}: expected an integer >= 1")
        try:
            online = yaml.safe_load(resolve_path(p["online"], "params.online").read_text())
            rig = yaml.safe_load(resolve_path(p["rig"], "params.rig").read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        online.update(mode="autonomous", n_queries=p["n_queries"], save_windows=False, seed=int(cfg.seed))
        online["algorithm"] = {**online["algorithm"], **as_dict(p["algorithm"], "params.algorithm")}
        try:
            c = OnlineConfig.from_dict(online)
            StimulationPlan.for_rig(c, rig, SafetyLimits.from_dict(rig["limits"])).preflight()
        except ValueError as exc:
            raise ConfigError(f"params.online={p['online']}: {exc}") from None
        return p, online, rig

    def drive(self, run: Run) -> dict:
        from hardware.rig import resolve_path
        from hardware.serve.process import ServerProcess
        from sweeps import results

        cfg = run.cfg
        params, online, rig = self.plan(cfg)
        run.dir.mkdir(parents=True, exist_ok=True)
        run.open_parent(tags={"neuro_opt.kind": "serve_load"})
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if cfg.progress else (lambda msg: None)
        with ServerProcess(run.dir / "serve", resolve_path(params["rig"], "params.rig")) as server:
            rows, refs = measure(server, params, online, rig, run.dir / "reference", int(cfg.seed), say)
        body = summarize(params, rows, refs, run.dir)
        parent = run.require_parent()
        results.log_groups(run.tracker, parent, body)
        run.tracker.metrics(parent, {k: v for k, v in body["headline_metrics"].items()})
        return body


def measure(server, params: dict, online: dict, rig: dict, ref_dir: Path, seed: int, say=print):
    """Every round: the in-process reference, then each session count over HTTP against ``server``
    (a :class:`~hardware.serve.process.ServerProcess`); returns (rows, references)."""
    from hardware.serve.load import drive_sessions, in_process, wait_for_outputs

    rows: list[dict] = []
    refs: list[dict] = []
    top = max(params["sessions"])
    for rnd in range(1, params["rounds"] + 1):
        ref = in_process(online, rig, top, ref_dir / f"round{rnd}", seed=seed)
        refs.append(ref)
        say(f"round {rnd} in-process: {ref['queries_per_s']:.1f} queries/s")
        for n in params["sessions"]:
            r = drive_sessions(server.url, server.token, online, n, seed=seed)
            r["round"] = rnd
            # the next measurement starts on an idle server: its outputs of these sessions are written
            r["outputs_s"] = wait_for_outputs(server.root, r["session_ids"])
            r["same_points"] = sum(r["points"][i] == ref["points"][i] for i in range(n))
            rows.append(r)
            say(
                f"round {rnd} {n} sessions: {r['requests_per_s']:.0f} requests/s, ask p99 "
                f"{_p(r['ask_ms'], 99):.1f} ms, {r['completed']}/{n} completed, {len(r['errors'])} errors"
            )
    return rows, refs


def summarize(params: dict, rows: list[dict], refs: list[dict], run_dir: Path) -> dict:
    """Groups per session count (best round), the in-process reference, ratios, decisions, figure."""
    ref_ask = min(_p(r["ask_ms"], 50) for r in refs)
    ref_tell = min(_p(r["tell_ms"], 50) for r in refs)
    groups, ratios = [], []
    for n in params["sessions"]:
        mine = [r for r in rows if r["sessions"] == n]
        m = {
            "requests_per_s": max(r["requests_per_s"] for r in mine),
            "queries_per_s": max(r["queries_per_s"] for r in mine),
            "ask_p50_ms": min(_p(r["ask_ms"], 50) for r in mine),
            "ask_p99_ms": min(_p(r["ask_ms"], 99) for r in mine),
            "tell_p50_ms": min(_p(r["tell_ms"], 50) for r in mine),
            "tell_p99_ms": min(_p(r["tell_ms"], 99) for r in mine),
            "completed": min(r["completed"] for r in mine),
            "errors": max(len(r["errors"]) for r in mine),
        }
        groups.append(
            {
                "params": {"sessions": n},
                "n": int(sum(len(r["tell_ms"]) for r in mine)),
                "metrics": {k: [float(v), 0.0] for k, v in m.items()},
                "rounds": [
                    {
                        "round": r["round"],
                        "requests_per_s": r["requests_per_s"],
                        "ask_p99_ms": _p(r["ask_ms"], 99),
                        "wall_s": r["wall_s"],
                        "outputs_s": r["outputs_s"],
                        "completed": r["completed"],
                        "errors": r["errors"][:3],
                    }
                    for r in mine
                ],
                "same_points": min(r["same_points"] for r in mine),
            }
        )
        ratios.append(
            {
                "sessions": n,
                "ask_p50_over_in_process": m["ask_p50_ms"] / ref_ask,
                "tell_p50_over_in_process": m["tell_p50_ms"] / ref_tell,
            }
        )
    big = groups[-1]["metrics"]
    n_big = groups[-1]["params"]["sessions"]
    decisions = {
        "sessions_compared": sum(g["params"]["sessions"] * len(g["rounds"]) for g in groups),
        "identical": all(g["same_points"] == g["params"]["sessions"] for g in groups),
    }
    headline = [
        f"{n_big} concurrent sessions over HTTP: {big['requests_per_s'][0]:.0f} requests/s, ask p99 "
        f"{big['ask_p99_ms'][0]:.1f} ms (p50 {big['ask_p50_ms'][0]:.1f}), tell p99 {big['tell_p99_ms'][0]:.1f} ms; "
        f"{int(big['completed'][0])}/{n_big} completed, {int(big['errors'][0])} errors",
        f"in-process reference: ask {ref_ask:.2f} ms, tell {ref_tell:.2f} ms (median)",
        "every HTTP session asked the same points as its in-process twin"
        if decisions["identical"]
        else "some HTTP sessions asked other points than their in-process twins",
    ]
    figs = Path(run_dir) / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    figure(groups, ref_ask, figs / "serve_load.png")
    return {
        "headline": headline,
        "groups": groups,
        "reference": {"ask_p50_ms": ref_ask, "tell_p50_ms": ref_tell, "rounds": len(refs)},
        "ratios": ratios,
        "decisions": decisions,
        "headline_metrics": {
            "requests_per_s_max_sessions": big["requests_per_s"][0],
            "ask_p99_ms_max_sessions": big["ask_p99_ms"][0],
            "identical_decisions": float(decisions["identical"]),
        },
    }


def figure(groups: list[dict], ref_ask: float, path: Path) -> Path:
    """Requests/s and ask latency (p50, p99) against the number of concurrent sessions."""
    from sweeps.plots import plt

    n = [g["params"]["sessions"] for g in groups]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(n, [g["metrics"]["requests_per_s"][0] for g in groups], "-o")
    axes[0].set_xlabel("concurrent sessions")
    axes[0].set_ylabel("requests per second (ask + tell)")
    axes[0].set_title("throughput of one server")
    for key, style in (("ask_p50_ms", "-o"), ("ask_p99_ms", "--s")):
        axes[1].plot(n, [g["metrics"][key][0] for g in groups], style, label=key.replace("_ms", "").replace("_", " "))
    axes[1].axhline(ref_ask, color="grey", lw=1, label="in-process ask (median)")
    axes[1].set_xlabel("concurrent sessions")
    axes[1].set_ylabel("ask latency (ms, client side)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    axes[1].set_title("what a rig waits for the next stimulation")
    axes[0].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(v) for v in n])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


KIND = ServeLoadKind()
