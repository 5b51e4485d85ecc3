"""Start a local Ray that listens on the loopback interface only.

On Linux, Ray resolves a local node's address to the machine's external address, so a plain
``ray.init()`` serves its GCS, raylet, workers and agents on every interface, where nobody
outside the machine needs them. Its switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes a
local node use 127.0.0.1, and then every Ray process binds there.

Both the launcher (``sweeps``) and the online runner (``hardware``) start local Rays; this module
lives in ``hardware`` because the arrows point ``sweeps -> hardware``.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray starts its workers at niceness 15 unless this says otherwise: on a machine shared with other
# work, any ordinary (niceness 0) process then takes nearly all of a worker's core. A local Ray here
# starts its workers at 0, sharing the cores evenly with other jobs; a value in the environment wins.
WORKER_NICENESS = "RAY_worker_niceness"


def init_local(**kwargs: Any) -> None:
    """``ray.init(address="local", **kwargs)``, every Ray process bound to 127.0.0.1, workers at
    niceness 0 unless ``RAY_worker_niceness`` is set."""
    import ray
    from ray._private import ray_constants

    before_env, before_const = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    before_nice = os.environ.get(WORKER_NICENESS)
    # Ray reads the switch once, at import: set the imported value too (the spawned processes read the env)
    os.environ[LOOPBACK_SWITCH] = "0"
    os.environ.setdefault(WORKER_NICENESS, "0")  # read by the raylet that ray.init spawns
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        for name, before in ((LOOPBACK_SWITCH, before_env), (WORKER_NICENESS, before_nice)):
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before
