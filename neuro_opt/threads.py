"""Intra-op threads: how many torch uses, set for a block, and the library's default.

torch runs one operation on a pool of intra-op threads (GNU OpenMP, libgomp, in the CPU builds
used here: ``torch.__config__.parallel_info()``). A parallel region waits for its slowest thread,
so on cores shared with other work (other sweep cells, other jobs) a second thread can make a
small operation many times slower instead of faster; and libgomp's idle threads spin after each
region before they sleep. A one-thread task (every sweep cell by default) has no OpenMP team, so
no idle thread at all. libgomp's own bounded spin is kept for tasks of several threads: both
``OMP_WAIT_POLICY=PASSIVE`` and a shorter ``GOMP_SPINCOUNT`` made the back-to-back operations of a
2-thread online GP-BO query wait for sleeping threads (docs/cluster.md).

* :func:`intra_op_threads`: torch uses ``n`` threads inside a ``with`` block, restored after.
  Every sweep cell runs inside one whose ``n`` is the CPUs its Ray task holds
  (``cluster.cpus_per_cell``, 1 by default).
* :func:`default_threads`: the thread count of library calls that run whole simulations
  (:func:`neuro_opt.simulate.simulate`) when their caller gives none: the ``n`` of the innermost
  enclosing :func:`intra_op_threads` block (so a cell holding 2 CPUs runs with 2), else 1. One,
  because the batched engine's matrices are small (replicates x points): a second thread has
  little to share and a slow partner to wait for, so the library never oversubscribes a machine
  by default.
* :func:`available_cpus`: the CPUs this process may run on.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from contextvars import ContextVar
from typing import Iterator

__all__ = ["available_cpus", "check_threads", "default_threads", "intra_op_threads"]


# the n of the innermost intra_op_threads block (None: outside every block)
_ENCLOSING: ContextVar[int | None] = ContextVar("neuro_opt_intra_op_threads", default=None)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def default_threads() -> int:
    """Intra-op threads for a library call given none: the innermost :func:`intra_op_threads` block's, else 1."""
    enclosing = _ENCLOSING.get()
    return 1 if enclosing is None else enclosing


def check_threads(n: object, name: str = "threads") -> int:
    """``n`` as an int if it is an integer >= 1; a one-line ValueError naming ``name`` otherwise."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name}={n!r}: intra-op threads must be an integer >= 1")
    return int(n)


@contextlib.contextmanager
def intra_op_threads(n: int | None, blas: bool = False) -> Iterator[None]:
    """torch uses ``n`` intra-op threads inside the block; the previous count is restored after.

    Args:
        n: an integer >= 1 (anything else is a ValueError), or None to leave the count as it is.
        blas: also limit the native pools torch does not own (numpy's BLAS, OpenMP) to ``n``
            with threadpoolctl, for blocks whose time goes to numpy as well.
    """
    if n is None:
        yield
        return
    n = check_threads(n)
    import torch

    before = torch.get_num_threads()
    token = _ENCLOSING.set(n)
    torch.set_num_threads(n)
    try:
        if blas:
            from threadpoolctl import threadpool_limits  # gpytorch's scikit-learn requires it

            with threadpool_limits(limits=n):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(before)
        _ENCLOSING.reset(token)
