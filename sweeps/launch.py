"""``python -m sweeps.launch +exp=NAME [key=value ...]``: compose, run, report.

Hydra composes ``conf/config.yaml`` with the experiment and the schema validates it; the run
itself is :func:`sweeps.runner.run` (the one lifecycle every experiment shares). Errors the user
can act on end with one line and an exit code (2: the config, 130: interrupted, 1: otherwise);
the last line printed is the path of ``summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweeps.runner import run
from sweeps.schema import Interrupted, LaunchError
from sweeps.store import HYDRA_FILES


def discard_if_untouched(run_dir: Path) -> None:
    """Remove a run folder holding only what Hydra wrote at start: a launch that failed before any
    work leaves no folder behind (nor creates one it was only told to read, ``resume=/typo``)."""
    if not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()}
    hydra = run_dir / ".hydra"
    hydra_only = not hydra.is_dir() or {p.name for p in hydra.iterdir()} <= set(HYDRA_FILES)
    log = run_dir / "launch.log"
    if names <= {".hydra", "launch.log"} and hydra_only and not (log.is_file() and log.stat().st_size):
        import shutil

        shutil.rmtree(run_dir)


def _terminate(signum, frame):  # SIGTERM ends a launch as Ctrl-C does: parent KILLED, one line
    raise KeyboardInterrupt


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        path = run(cfg, list(hc.overrides.task), run_dir)
    except LaunchError as exc:
        if not isinstance(exc, Interrupted):
            discard_if_untouched(run_dir)
        print(f"{'' if isinstance(exc, Interrupted) else 'error: '}{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # outside a sweep's cells (a drive kind, or before any work)
        discard_if_untouched(run_dir)
        print(
            f"interrupted; anything finished is kept in {run_dir} (resume=<that folder> carries on where the "
            f"experiment supports it)",
            file=sys.stderr,
        )
        sys.exit(130)
    if json.loads(path.read_text()).get("failed_cells"):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
