"""Timing in interleaved rounds (``params.rounds`` of ``+exp=latency`` and ``+exp=tbfm_latency``).

A cell that times several settings times them in rounds: round 1 times every setting once, round 2
times them all again, and so on (A B C, A B C, ... not A A A, B B B), so a burst of load on a shared
machine hits every setting of a round alike. A setting's figure is the lowest of its per-round
medians; the spread of those medians, ``(max - min) / min``, says how far the machine moved them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sweeps.schema import ConfigError


def check_rounds(value: Any, where: str = "") -> int:
    """``value`` as a round count (an integer >= 1); a one-line ConfigError naming ``params.rounds`` if not."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        at = f" ({where})" if where else ""
        raise ConfigError(
            f"params.rounds={value!r}{at}: expected an integer >= 1 (interleaved timing rounds per setting; "
            f"the summary takes the lowest per-round median)"
        )
    return value


def best_of_rounds(values: Any, rounds: Any) -> dict:
    """The per-round medians of ``values`` (``n``, one per timing) grouped by ``rounds`` (``n`` round
    numbers), the lowest of them, its round and their spread.

    Returns ``{"medians": [median of round 1, round 2, ...] (rounds in increasing order), "best": the
    lowest median, "best_round": its round, "spread": (max - min) / min of the medians (0 for one round)}``.
    """
    v, r = np.asarray(values, dtype=float), np.asarray(rounds)
    if v.shape != r.shape or v.size == 0:
        raise ValueError(f"best_of_rounds: {v.size} values and {r.size} round numbers; expected as many, >= 1")
    ids = sorted({int(x) for x in r})
    medians = [float(np.median(v[r == i])) for i in ids]
    k = int(np.argmin(medians))
    lo, hi = medians[k], max(medians)
    return {"medians": medians, "best": lo, "best_round": ids[k], "spread": float((hi - lo) / lo) if lo > 0 else 0.0}


def collapse(rows: list[dict], measured: Any, headline: str, derived: tuple[str, ...] = ()) -> list[dict]:
    """One row per setting from rows timed in rounds (each with a ``round`` column).

    A setting is the rows that agree on every column other than ``round``, the ``measured`` columns
    (``measured(name) -> bool``) and the ``derived`` ones (dropped: the caller recomputes them from the
    collapsed figures). Each measured column becomes the lowest of its non-null per-round values (null
    when none); ``headline`` also gets ``<headline>_rounds`` (its per-round values, by round),
    ``<headline>_spread`` ((max - min) / min of them) and ``best_round``; ``n_rounds`` counts the rounds.
    """
    settings: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple(sorted((k, repr(v)) for k, v in r.items() if k != "round" and k not in derived and not measured(k)))
        settings.setdefault(key, []).append(r)
    out = []
    for rs in settings.values():
        rs = sorted(rs, key=lambda r: int(r["round"]))
        first = rs[0]
        row = {k: v for k, v in first.items() if k != "round" and k not in derived and not measured(k)}
        for k in first:
            if measured(k):
                vals = [float(r[k]) for r in rs if r.get(k) is not None]
                row[k] = min(vals) if vals else None
        b = best_of_rounds([r[headline] for r in rs], [r["round"] for r in rs])
        row.update(
            {
                f"{headline}_rounds": b["medians"],
                f"{headline}_spread": b["spread"],
                "best_round": b["best_round"],
                "n_rounds": len(b["medians"]),
            }
        )
        out.append(row)
    return out
