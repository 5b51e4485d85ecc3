"""A competing load the throughput benchmark starts itself: busy processes, bounded in time.

:class:`BusyLoad` starts ``n`` processes, each a fresh interpreter (``python -I -c``, no module of
this project imported: a spawned ``multiprocessing`` child would import the launcher's main
module, torch included, before it could spin) running a tight pure-Python loop that does nothing
but use its core. Each ends by itself at its deadline (``max_s`` after the start) or when its
parent is gone, so a killed launch leaves no load behind for long; on exit the context stops it
(SIGTERM, then SIGKILL) and reaps it. Their CPU seconds, read from ``/proc/<pid>/stat``, say how
much load was actually present.

The processes run at a given niceness (0 by default: an ordinary job). Linux shares a core by
niceness; the launcher's local Ray starts its workers at 0 too (``hardware.local_ray``; Ray's own
default is 15, beside which a niceness-0 process takes nearly all of the core), so the default
load and the workers share the cores evenly.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
TICK = os.sysconf("SC_CLK_TCK")

# argv: deadline (epoch s), parent pid, niceness. Prints "ready" once spinning, "nice" if the
# niceness cannot be set (a lower one than the parent's needs privileges).
BUSY = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
deadline, parent, nice = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
try:
    os.setpriority(os.PRIO_PROCESS, 0, nice)
except OSError:
    print("nice", flush=True)
    sys.exit(3)
print("ready", flush=True)
x = 0
while time.time() < deadline and os.getppid() == parent:
    for _ in range(100_000):
        x += 1
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live (or not yet reaped) process; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


class BusyLoad:
    """``with BusyLoad(n, max_s, nice) as load:`` ``n`` busy processes at niceness ``nice`` for the
    duration of the block.

    The block starts once every process is spinning. ``load.cpu_s()`` is their CPU seconds so far
    (differences between two calls give the load during a measurement); after the block,
    ``load.pids`` lists the processes, every one of them ended and reaped, and ``load.final_cpu_s``
    their CPU seconds.
    """

    def __init__(self, processes: int, max_s: float, nice: int = 0):
        if not isinstance(processes, int) or processes < 0:
            raise ValueError(f"load processes must be an integer >= 0, got {processes!r}")
        if not max_s > 0:
            raise ValueError(f"the load's deadline must be > 0 seconds, got {max_s!r}")
        self.n, self.max_s, self.nice = processes, float(max_s), int(nice)
        self.pids: list[int] = []
        self._procs: list[subprocess.Popen] = []
        self.final_cpu_s = 0.0

    def __enter__(self) -> BusyLoad:
        deadline = time.time() + self.max_s
        args = [str(deadline), str(os.getpid()), str(self.nice)]
        try:
            for _ in range(self.n):
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", BUSY, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
                )
                self._procs.append(proc)
                self.pids.append(proc.pid)
            for proc in self._procs:
                self._wait_ready(proc)
        except BaseException:
            self._end()
            raise
        return self

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if line == "nice":
            raise RuntimeError(
                f"the competing load cannot run at niceness {self.nice} (this process has "
                f"{os.getpriority(os.PRIO_PROCESS, 0)}; a lower one needs privileges)"
            )
        if line != "ready":
            raise RuntimeError(f"load process {proc.pid} did not start within {READY_TIMEOUT_S:.0f} s")

    def cpu_s(self) -> float:
        """The load processes' CPU seconds so far (summed)."""
        return float(sum(cpu_seconds(p.pid) for p in self._procs))

    def alive(self) -> int:
        return sum(p.poll() is None for p in self._procs)

    def _end(self) -> None:
        self.final_cpu_s = self.cpu_s()  # before they are reaped (then /proc forgets them)
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self._procs = []

    def __exit__(self, *exc: object) -> None:
        self._end()
