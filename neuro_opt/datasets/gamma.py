"""Gamma-pdf synthetic spaces: smoothness (Fig. S5) and prior quality (Fig. S7).

Each synthetic dimension's input-output relationship is a gamma probability
density with fixed shape ``alpha`` and rate ``beta`` (``scipy.stats.gamma``,
``scale = 1 / beta``), evaluated at unit steps away from a random peak::

    profile(i) = pdf(mode + |i - peak|) / pdf(mode),   mode = max(alpha - 1, 0) / beta

With the default ``alpha = 1`` the profile is ``exp(-beta * |i - peak|)``: the
second-best value holds ``exp(-beta)`` of the best, 99 % at ``beta = 0.01``
(smoothest) and 2 % at ``beta = 3.95``, the published range. The variance of
the gamma distribution, ``alpha / beta**2``, is inversely proportional to
``beta**2``. A space's ground truth is the product of its dimensions' profiles.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.space import SearchSpace

BETA_RANGE = (0.01, 3.95)
PRIOR_QUALITIES = (-1.0, -0.5, 0.0, 0.33, 0.66, 1.0)


def gamma_profile(n_values: int, beta: float, peak: int, alpha: float = 1.0) -> np.ndarray:
    """One dimension's response profile (``n_values``), 1 at ``peak``."""
    from scipy import stats  # imported here: scipy.stats takes ~0.5 s to import

    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if not alpha >= 1:
        raise ValueError(f"alpha must be >= 1 (a unimodal profile), got {alpha!r}")
    mode = (alpha - 1.0) / beta
    dist = np.abs(np.arange(n_values) - peak).astype(np.float64)
    logp = stats.gamma.logpdf(mode + dist, a=alpha, scale=1.0 / beta)
    return np.exp(logp - stats.gamma.logpdf(mode, a=alpha, scale=1.0 / beta))


def _beta_sets(betas, n_subjects, n_dims, beta_range, rng) -> np.ndarray:
    """``n_subjects x n_dims`` betas: given for all, given per subject, or uniform in ``beta_range``."""
    if betas is None:
        lo, hi = beta_range
        if not 0 < lo <= hi:
            raise ValueError(f"beta_range must satisfy 0 < lo <= hi, got {beta_range}")
        return rng.uniform(lo, hi, size=(n_subjects, n_dims))
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim == 0:
        b = np.full(n_dims, float(b))
    if b.ndim == 1:
        if b.size != n_dims:
            raise ValueError(f"betas has {b.size} values for {n_dims} dimensions")
        b = np.tile(b, (n_subjects, 1))
    if b.shape != (n_subjects, n_dims) or not np.all(b > 0):
        raise ValueError(f"betas must be positive, one per dimension (or {n_subjects} x {n_dims}), got shape {b.shape}")
    return b


def stratified_betas(n_subjects: int, n_dims: int, beta_range: Sequence[float], rng) -> np.ndarray:
    """Beta sets spread over mean smoothness and smoothness variance (Fig. S5's two axes).

    Independent uniform betas all have a mean near the middle of the range (four
    draws average out), so subjects would barely differ in mean smoothness. Here
    subject ``s`` gets a mean level from an even ladder over ``beta_range`` and a
    random half-width, from 0 (every dimension alike) to the widest the range
    allows at that level (dimensions of very different smoothness); its betas
    are drawn uniformly in that band and recentred on the level.
    """
    lo, hi = beta_range
    if not 0 < lo <= hi:
        raise ValueError(f"beta_range must satisfy 0 < lo <= hi, got {beta_range}")
    levels = np.linspace(lo, hi, n_subjects + 2)[1:-1] if n_subjects > 1 else np.array([(lo + hi) / 2])
    rng.shuffle(levels)
    out = np.empty((n_subjects, n_dims))
    for s, m in enumerate(levels):
        half = rng.uniform(0.0, min(m - lo, hi - m))
        b = rng.uniform(m - half, m + half, size=n_dims)
        out[s] = np.clip(b - b.mean() + m, lo, hi)
    return out


def gamma_smoothness(
    n_subjects: int = 5,
    n_dims: int = 4,
    n_values: int = 7,
    seed: int = 0,
    betas: Sequence | None = None,
    beta_range: Sequence[float] = BETA_RANGE,
    alpha: float = 1.0,
    beta_sampling: str = "independent",
    name: str | None = None,
) -> Dataset:
    """Fig. S5: N-D spaces of controlled smoothness.

    Args:
        n_subjects: virtual subjects (5 published).
        n_dims: dimensions (4 published: 7**4 = 2,401 points).
        n_values: values per dimension (7).
        betas: one beta per dimension (shared by all subjects), a
            ``n_subjects x n_dims`` table, or None to draw them in
            ``beta_range`` as ``beta_sampling`` says.
        beta_sampling: ``"independent"`` (each beta uniform in the range) or
            ``"stratified"`` (subjects spread over mean smoothness and
            smoothness variance, see :func:`stratified_betas`).
        alpha: the gamma shape, fixed.

    Returns:
        problems keyed ``"gamma<s>/response"`` on dimensions ``p1 .. pN``
        (values ``1 .. n_values``), truth max 1; ``meta`` holds ``betas``,
        ``peaks``, ``beta_mean`` and ``beta_var``.
    """
    if n_subjects < 1 or n_dims < 1 or n_values < 2:
        raise ValueError("need n_subjects >= 1, n_dims >= 1 and n_values >= 2")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 55]))
    if beta_sampling not in ("independent", "stratified"):
        raise ValueError(f"beta_sampling must be 'independent' or 'stratified', got {beta_sampling!r}")
    if betas is None and beta_sampling == "stratified":
        B = stratified_betas(n_subjects, n_dims, beta_range, rng)
    else:
        B = _beta_sets(betas, n_subjects, n_dims, beta_range, rng)
    space = SearchSpace({f"p{d + 1}": range(1, n_values + 1) for d in range(n_dims)})
    problems = []
    for s in range(n_subjects):
        peaks = rng.integers(0, n_values, size=n_dims)
        truth = np.ones(space.n_points)
        for d in range(n_dims):
            truth *= gamma_profile(n_values, B[s, d], int(peaks[d]), alpha)[space.index[:, d]]
        problems.append(
            Problem(
                key=f"gamma{s + 1}/response",
                space=space,
                truth=truth,
                meta={
                    "generator": "gamma_smoothness",
                    "seed": seed,
                    "alpha": alpha,
                    "betas": B[s].tolist(),
                    "peaks": peaks.tolist(),
                    "beta_mean": float(B[s].mean()),
                    "beta_var": float(B[s].var()),
                },
            )
        )
    return Dataset(name or "gamma_smoothness", problems, meta={"seed": seed, "default_response": "gaussian"})


# ----------------------------------------------------------------------------- Fig. S7


def marginal_reference(truth_grid: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """The truth averaged over every dimension not in ``dims`` (broadcast back to the grid).

    This is what a prior on ``dims`` can know: with every dimension it is the
    truth itself.
    """
    other = tuple(d for d in range(truth_grid.ndim) if d not in dims)
    ref = truth_grid.mean(axis=other, keepdims=True) if other else truth_grid
    return np.broadcast_to(ref, truth_grid.shape)


def noisy_prior(reference: np.ndarray, r: float, rng: np.random.Generator, top: float) -> np.ndarray:
    """A map whose Pearson correlation with ``reference`` is exactly ``r``.

    ``reference`` (any shape, not constant) is standardized to ``z``; Gaussian
    noise orthogonal to ``z`` and to the constant is mixed in:
    ``r * z + sqrt(1 - r^2) * e``. ``r = 1`` is the reference without noise,
    ``r < 0`` the inverted reference plus noise. The result is min-max scaled
    to ``[0, top]`` (correlation unchanged).
    """
    if not -1.0 <= r <= 1.0:
        raise ValueError(f"prior quality r must be in [-1, 1], got {r!r}")
    z = reference.ravel().astype(np.float64)
    if z.size < 3 or np.ptp(z) == 0:
        raise ValueError("the prior's reference map is constant; no correlation can be imposed")
    z = (z - z.mean()) / z.std()
    e = rng.normal(size=z.size)
    e -= e.mean()
    e -= (e @ z) / (z @ z) * z
    e /= e.std()
    p = r * z + np.sqrt(max(0.0, 1.0 - r * r)) * e
    p = (p - p.min()) / np.ptp(p) * top if np.ptp(p) > 0 else np.full_like(p, top)
    return p.reshape(reference.shape)


def _rat_maps(n_subjects: int, seed: int, rat_path, muscle):
    """``n_subjects`` (space, truth) rat maps: NeuroMOSAICS files when ``rat_path`` is set, else synthetic."""
    if rat_path is None:
        from neuro_opt.datasets.synthetic import synthetic_cortical

        ds = synthetic_cortical(kind="rat", n_subjects=n_subjects, n_muscles=1, seed=seed)
        return [(p.space, p.truth / p.truth.max(), p.key) for p in ds]
    from neuro_opt.datasets.neuromosaics import load_neuromosaics_cortical

    ds = load_neuromosaics_cortical(path=rat_path, species="rat", muscles=None if muscle is None else [muscle])
    first: dict[str, Problem] = {}
    for p in ds:
        first.setdefault(p.subject, p)
    maps = list(first.values())
    return [
        (
            maps[s % len(maps)].space,
            maps[s % len(maps)].truth / maps[s % len(maps)].truth.max(),
            maps[s % len(maps)].key,
        )
        for s in range(n_subjects)
    ]


def prior_quality(
    n_subjects: int = 6,
    prior_dims: int | Sequence[str] = 6,
    prior_r: float = 1.0,
    seed: int = 0,
    n_values: int = 7,
    beta_range: Sequence[float] = BETA_RANGE,
    alpha: float = 1.0,
    rat_path=None,
    muscle: str | None = None,
    name: str | None = None,
) -> Dataset:
    """Fig. S7: a rat cortical map x 4 gamma dimensions, with a prior of chosen quantity and quality.

    Args:
        n_subjects: virtual subjects (6: one per rat map).
        prior_dims: quantity, the number of dimensions (0..6) drawn at random
            per subject that the prior informs, or their names (``x``, ``y``,
            ``g1`` .. ``g4``). 0 gives no prior.
        prior_r: quality, the Pearson correlation of the prior with its
            reference (the truth averaged over the uninformed dimensions; the
            truth itself when all 6 are informed); published values
            :data:`PRIOR_QUALITIES`.
        rat_path: a NeuroMOSAICS rat folder to take the maps from (the first
            muscle, or ``muscle``, of each subject); None: synthetic rat maps.
        n_values, beta_range, alpha: of the 4 gamma dimensions (see
            :func:`gamma_smoothness`).

    Returns:
        problems keyed ``"prior<s>/response"`` over ``(x, y, g1, g2, g3, g4)``
        (8 x 4 x 7**4 = 76,832 points for a full rat array), truth max 1,
        ``prior`` (``P``, in ``[0, 1]``) or None; ``meta`` holds
        ``prior_dims`` (names; ``[]`` means no prior by design), ``prior_r``,
        ``betas`` and ``peaks``.

    Random streams: each subject's truth (betas, peaks) comes from
    ``SeedSequence([seed, 77, s])`` and its prior (informed dimensions, noise)
    from ``SeedSequence([seed, 78, s])``, so a subject's truth is the same for
    every ``prior_dims`` and ``prior_r`` (conditions are paired), and for a
    given quantity the informed dimensions and the noise draw are the same
    for every quality.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    gdims = [f"g{k + 1}" for k in range(4)]
    problems = []
    for s, (map_space, map_truth, source) in enumerate(_rat_maps(n_subjects, seed, rat_path, muscle)):
        names = list(map_space.names) + gdims
        dims = {n: v.values for n, v in zip(map_space.names, map_space.dims)}
        dims.update({g: range(1, n_values + 1) for g in gdims})
        mask = np.broadcast_to(map_space.mask[(...,) + (None,) * 4], map_space.grid_shape + (n_values,) * 4)
        space = SearchSpace(dims, mask=mask)
        grid = np.nan_to_num(map_space.to_grid(map_truth), nan=0.0)
        truth_rng = np.random.default_rng(np.random.SeedSequence([seed, 77, s]))
        prior_rng = np.random.default_rng(np.random.SeedSequence([seed, 78, s]))
        betas = _beta_sets(None, 1, 4, beta_range, truth_rng)[0]
        peaks = truth_rng.integers(0, n_values, size=4)
        for k in range(4):
            prof = gamma_profile(n_values, betas[k], int(peaks[k]), alpha)
            grid = grid[..., None] * prof.reshape([1] * grid.ndim + [n_values])
        truth = grid[tuple(space.index.T)]
        if isinstance(prior_dims, (int, np.integer)):
            if not 0 <= prior_dims <= len(names):
                raise ValueError(f"prior_dims must be 0..{len(names)}, got {prior_dims}")
            chosen = sorted(prior_rng.choice(len(names), size=int(prior_dims), replace=False).tolist())
        else:
            unknown = [d for d in prior_dims if d not in names]
            if unknown:
                raise ValueError(f"prior_dims names {unknown} unknown; dimensions are {names}")
            chosen = sorted(names.index(d) for d in prior_dims)
        prior = None
        if chosen:
            ref = marginal_reference(grid, chosen)
            reduced = ref[tuple(slice(None) if d in chosen else slice(0, 1) for d in range(grid.ndim))]
            prior_grid = np.broadcast_to(noisy_prior(reduced, float(prior_r), prior_rng, top=1.0), grid.shape)
            prior = prior_grid[tuple(space.index.T)]
        problems.append(
            Problem(
                key=f"prior{s + 1}/response",
                space=space,
                truth=truth / truth.max(),
                prior=prior,
                meta={
                    "generator": "prior_quality",
                    "seed": seed,
                    "map_source": source,
                    "prior_dims": [names[d] for d in chosen],
                    "prior_r": float(prior_r),
                    "betas": betas.tolist(),
                    "peaks": peaks.tolist(),
                    "alpha": alpha,
                },
            )
        )
    return Dataset(
        name or "prior_quality",
        problems,
        meta={"seed": seed, "prior_dims": prior_dims, "prior_r": float(prior_r), "default_response": "gaussian"},
    )
