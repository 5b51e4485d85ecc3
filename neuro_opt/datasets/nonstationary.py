"""Non-stationary problems: the ground truth changes with the query index.

Scenarios (Cell Reports Medicine Fig. 5, NeuroMOSAICS Dataset 2):

- ``drift``: excitability rises and falls within a session: a global gain
  ``1 + amplitude * sin(2 pi t / period + phase)`` and one electrode whose
  excitability surges and fades over a few queries;
- ``plasticity``: continual learning across sessions of
  ``queries_per_session`` queries: after injury the cortical output is
  upregulated (amplitude grows by ``growth`` over the sessions) and the map
  reorganizes (it morphs from a first to a second map);
- ``electrode_loss``: from query ``loss_query`` on, the best electrode is
  turned off (responds at ``loss_residual`` of its value).

:class:`NonStationaryProblem` stores plain arrays and numbers only (no
callables), so it pickles to Ray workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuro_opt.datasets.base import Dataset, Problem

SCENARIOS = ("drift", "plasticity", "electrode_loss")


@dataclass
class NonStationaryProblem(Problem):
    """A problem whose truth at 0-based query ``t`` is :meth:`truth_at`.

    ``truth_at(t) = sessions[s] * gain(t) * transient(t) * loss(t)`` with
    ``s = min(t // queries_per_session, S - 1)``.

    Attributes (beyond :class:`Problem`'s; ``truth`` is the map at query 0):
        sessions: ``S x P`` truth per session, or None (``truth`` throughout).
        queries_per_session: queries in a session (> 0 when ``sessions`` is set).
        drift_amplitude, drift_period, drift_phase: the global gain
            ``1 + a * sin(2 pi t / period + phase)`` (a = 0: none).
        transient_point, transient_gain, transient_center, transient_width:
            one point's gain ``1 + g * exp(-(t - c)^2 / (2 w^2))`` (point -1: none).
        lost_points: points turned off from ``loss_query`` on (empty: none),
            responding at ``loss_residual`` of their value.
    """

    sessions: np.ndarray | None = None
    queries_per_session: int = 0
    drift_amplitude: float = 0.0
    drift_period: float = 1.0
    drift_phase: float = 0.0
    transient_point: int = -1
    transient_gain: float = 0.0
    transient_center: float = 0.0
    transient_width: float = 1.0
    lost_points: tuple = field(default_factory=tuple)
    loss_query: int = 0
    loss_residual: float = 0.0

    stationary = False

    def __post_init__(self):
        super().__post_init__()
        P = self.space.n_points
        if self.sessions is not None:
            self.sessions = np.asarray(self.sessions, dtype=np.float64)
            if self.sessions.ndim != 2 or self.sessions.shape[1] != P or not np.all(np.isfinite(self.sessions)):
                raise ValueError(f"problem {self.key!r}: sessions must be finite, n_sessions x {P}")
            if self.queries_per_session < 1:
                raise ValueError(f"problem {self.key!r}: queries_per_session must be >= 1 with sessions")
        if not abs(self.drift_amplitude) < 1:
            raise ValueError(f"problem {self.key!r}: drift_amplitude must be in (-1, 1)")
        if self.drift_period <= 0 or self.transient_width <= 0:
            raise ValueError(f"problem {self.key!r}: drift_period and transient_width must be > 0")
        self.lost_points = tuple(int(p) for p in self.lost_points)
        if any(not 0 <= p < P for p in self.lost_points) or not -1 <= self.transient_point < P:
            raise ValueError(f"problem {self.key!r}: lost/transient points must be point indices 0..{P - 1}")

    def session_of(self, query: int) -> int:
        """0-based session of 0-based query ``query``."""
        if self.sessions is None:
            return 0
        return min(int(query) // self.queries_per_session, self.sessions.shape[0] - 1)

    def gain_at(self, query: int) -> float:
        """The global excitability gain at ``query``."""
        return 1.0 + self.drift_amplitude * np.sin(2 * np.pi * query / self.drift_period + self.drift_phase)

    def truth_at(self, query: int) -> np.ndarray:
        """Ground-truth mean map (``P``) in force at 0-based query ``query``."""
        base = self.truth if self.sessions is None else self.sessions[self.session_of(query)]
        out = base * self.gain_at(query)
        if self.transient_point >= 0 and self.transient_gain:
            z = (query - self.transient_center) / self.transient_width
            out[self.transient_point] *= 1.0 + self.transient_gain * np.exp(-0.5 * z * z)
        if self.lost_points and query >= self.loss_query:
            out[list(self.lost_points)] *= self.loss_residual
        return out


def nonstationary(
    scenario: str = "drift",
    kind: str = "rat",
    n_subjects: int = 4,
    n_muscles: int = 1,
    seed: int = 0,
    drift_amplitude: float = 0.3,
    drift_period: tuple = (20.0, 60.0),
    n_sessions: int = 6,
    queries_per_session: int = 8,
    growth: float = 1.0,
    loss_query: int = 24,
    loss_residual: float = 0.0,
    name: str | None = None,
) -> Dataset:
    """Non-stationary problems over a cortical (``rat``/``nhp``) or ``spinal`` array.

    Base maps are the ground truths of :func:`~neuro_opt.datasets.synthetic.synthetic_cortical`
    or :func:`~neuro_opt.datasets.spinal.synthetic_spinal` with the same seed.

    Args:
        scenario: ``"drift"``, ``"plasticity"`` or ``"electrode_loss"``.
        kind: ``"rat"``, ``"nhp"`` or ``"spinal"``.
        drift_amplitude: global gain amplitude (drift).
        drift_period: ``[lo, hi]`` range of the gain's period, in queries (drift).
        n_sessions, queries_per_session: sessions of the plasticity scenario
            (8 queries a session, as in the continual-learning experiment).
        growth: relative amplitude gain from the first to the last session.
        loss_query: 0-based query from which the best electrode is off.
        loss_residual: fraction of its response the lost electrode keeps.

    Returns:
        a dataset of :class:`NonStationaryProblem` keyed like the base; for
        ``electrode_loss``, ``meta["lost_point"]`` is the best point of the truth.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    if kind == "spinal":
        from neuro_opt.datasets.spinal import synthetic_spinal

        base = synthetic_spinal(n_subjects=n_subjects, n_muscles=n_muscles, seed=seed)
    elif kind in ("rat", "nhp"):
        from neuro_opt.datasets.synthetic import synthetic_cortical

        base = synthetic_cortical(kind=kind, n_subjects=n_subjects, n_muscles=n_muscles, seed=seed, state="sedated")
    else:
        raise ValueError(f"kind must be 'rat', 'nhp' or 'spinal', got {kind!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    problems: list[Problem] = []
    for p in base:
        truth = p.truth
        meta = {
            "generator": "nonstationary",
            "scenario": scenario,
            "kind": kind,
            "seed": seed,
            "units": p.meta.get("units"),
        }
        extra: dict = {}
        if scenario == "drift":
            lo, hi = drift_period
            order = np.argsort(truth)[::-1]
            extra = dict(
                drift_amplitude=float(drift_amplitude),
                drift_period=float(rng.uniform(lo, hi)),
                drift_phase=float(rng.uniform(0, 2 * np.pi)),
                transient_point=int(order[1]),
                transient_gain=float(rng.uniform(0.8, 1.5)),
                transient_center=float(rng.uniform(5, 40)),
                transient_width=float(rng.uniform(1.5, 4.0)),
            )
            meta["transient_point"] = int(order[1])
        elif scenario == "plasticity":
            if n_sessions < 1:
                raise ValueError(f"n_sessions must be >= 1, got {n_sessions}")
            second = _reorganized(p, rng)
            w = np.linspace(0.0, 1.0, n_sessions)[:, None]
            amp = 1.0 + growth * w
            sessions = amp * ((1 - w) * truth[None, :] + w * second[None, :])
            extra = dict(sessions=sessions, queries_per_session=int(queries_per_session))
            truth = sessions[0]
            meta["best_per_session"] = sessions.argmax(axis=1).tolist()
        else:
            best = int(np.argmax(truth))
            extra = dict(lost_points=(best,), loss_query=int(loss_query), loss_residual=float(loss_residual))
            meta.update(lost_point=best, loss_query=int(loss_query))
        problems.append(NonStationaryProblem(key=p.key, space=p.space, truth=truth, meta=meta, **extra))
    return Dataset(
        name or f"nonstationary_{scenario}",
        problems,
        meta={"scenario": scenario, "kind": kind, "seed": seed, "default_response": "gaussian"},
    )


def _reorganized(problem: Problem, rng: np.random.Generator) -> np.ndarray:
    """A second map sharing the first's scale: its hotspot moved by about two electrodes."""
    X = problem.space.X
    lo, hi = X.min(axis=0), X.max(axis=0)
    c0 = X[np.argmax(problem.truth)]
    c1 = np.clip(c0 + rng.normal(0, 2.0, size=X.shape[1]), lo, hi)
    w = rng.uniform(0.8, 1.8)
    bump = np.exp(-0.5 * np.sum(((X - c1) / w) ** 2, axis=1))
    m = 0.5 * problem.truth / problem.truth.max() + bump
    return problem.truth.max() * m / m.max()
