"""``python -m hardware.online --online FILE --rig FILE [...]``: a session without Hydra (bench dry runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from hardware.journal import JournalError
from hardware.online.config import MODES
from hardware.online.runner import run_online
from hardware.online.session import SessionStopped, error_text
from hardware.rig import RigError, resolve_path
from hardware.safety import SafetyViolation


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(
        prog="python -m hardware.online", description="Run or resume an online session without Hydra."
    )
    ap.add_argument("--online", required=True, help="online config YAML (conf/online/NAME.yaml)")
    ap.add_argument("--rig", required=True, help="rig config YAML (conf/rig/simulated.yaml or synapse.yaml)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. rig.port=24414 or online.algorithm.kappa=2.0 (repeatable)",
    )
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--resume", default=None, help="a session folder (or its journal.jsonl) to continue")
    ap.add_argument("--mode", default=None, choices=MODES)
    ap.add_argument("--n-queries", type=int, default=None)
    ap.add_argument("--no-actor", action="store_true", help="drive the rig in-process instead of its Ray actor")
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args(argv)
    with open(resolve_path(args.online, "--online")) as fh:
        online = yaml.safe_load(fh)
    with open(resolve_path(args.rig, "--rig")) as fh:
        rig = yaml.safe_load(fh)
    for item in args.set:
        key, sep, val = item.partition("=")
        root, _, rest = key.partition(".")
        if not sep or root not in ("online", "rig") or not rest:
            ap.error(f"--set expects online.KEY=VALUE or rig.KEY=VALUE, got {item!r}")
        _set(online if root == "online" else rig, rest, yaml.safe_load(val))
    try:
        summary = run_online(
            online,
            rig,
            run_dir=args.run_dir,
            resume=args.resume,
            mode=args.mode,
            n_queries=args.n_queries,
            use_actor=not args.no_actor,
            ray_address=args.ray_address,
        )
    except SessionStopped as exc:
        print(
            f"error: {exc}; session folder {exc.run_dir}; resume: the same command with --resume {exc.run_dir}",
            file=sys.stderr,
        )
        return 1
    except (SafetyViolation, RigError, JournalError, ValueError, FileNotFoundError) as exc:
        print(f"error: {error_text(exc) if isinstance(exc, RigError) else exc}", file=sys.stderr)
        return 2
    print(Path(summary["run_dir"]) / "session.json")
    return 0 if summary.get("dry_run", {}).get("ok", True) else 3
