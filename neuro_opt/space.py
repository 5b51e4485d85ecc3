"""Discrete search spaces over named dimensions.

A :class:`SearchSpace` is the Cartesian grid of its dimensions' values, minus the
grid points a mask excludes (the 4 unused corners of a 10 x 10 NHP array, say).
Points are numbered ``0 .. n_points-1`` in C order over the *valid* grid points;
every algorithm and dataset speaks in these flat point indices.

GP inputs (:attr:`SearchSpace.X`) are the grid *indices* of each dimension
(0, 1, 2, ...), so a length-scale of 1.0 means one grid step (one electrode
spacing, one frequency step) in every dimension, which is the scale on which the
published length-scale bounds (rho 0.02 to 5.0) are expressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Dimension:
    """One named discrete dimension and its ordered values."""

    name: str
    values: tuple

    def __len__(self) -> int:
        return len(self.values)


class SearchSpace:
    """Named discrete dimensions, their grid, and a mask of usable points.

    Args:
        dims: mapping ``name -> values`` (insertion order is the dimension order)
            or a sequence of :class:`Dimension`.
        mask: optional boolean array of shape ``grid_shape``; False marks a grid
            point that does not exist (unused electrode). Defaults to all True.

    Attributes:
        names: dimension names, ``d`` of them.
        grid_shape: number of values per dimension.
        n_points: number of valid points ``P``.
        index: ``P x d`` integer grid indices of the valid points.
        X: ``P x d`` float GP inputs (grid indices as floats).
    """

    def __init__(self, dims: Mapping[str, Sequence] | Sequence[Dimension], mask: np.ndarray | None = None):
        if isinstance(dims, Mapping):
            dims = [Dimension(str(k), tuple(v)) for k, v in dims.items()]
        self.dims: tuple[Dimension, ...] = tuple(dims)
        if not self.dims:
            raise ValueError("SearchSpace needs at least one dimension")
        for dim in self.dims:
            if len(dim.values) == 0:
                raise ValueError(f"SearchSpace dimension {dim.name!r} has no values")
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ValueError(f"SearchSpace dimension names must be unique, got {names}")
        self.names: tuple[str, ...] = tuple(names)
        self.grid_shape: tuple[int, ...] = tuple(len(d) for d in self.dims)
        if mask is None:
            mask = np.ones(self.grid_shape, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.grid_shape:
            raise ValueError(f"SearchSpace mask has shape {mask.shape}, expected grid shape {self.grid_shape}")
        if not mask.any():
            raise ValueError("SearchSpace mask excludes every point")
        self.mask = mask
        self.index = np.argwhere(mask)  # C order == flat order of valid points
        self.n_points = int(self.index.shape[0])
        self.X = self.index.astype(np.float64)
        self._flat_of_grid = np.full(self.grid_shape, -1, dtype=np.int64)
        self._flat_of_grid[tuple(self.index.T)] = np.arange(self.n_points)

    @property
    def ndim(self) -> int:
        return len(self.dims)

    def __repr__(self) -> str:
        dims = ", ".join(f"{d.name}[{len(d)}]" for d in self.dims)
        return f"SearchSpace({dims}, n_points={self.n_points})"

    def point_of_index(self, grid_index: Sequence[int]) -> int:
        """Flat point number of a grid index tuple; raises if masked or out of range."""
        gi = tuple(int(i) for i in grid_index)
        if len(gi) != self.ndim or any(not 0 <= i < n for i, n in zip(gi, self.grid_shape)):
            raise ValueError(f"grid index {gi} is outside grid shape {self.grid_shape}")
        p = int(self._flat_of_grid[gi])
        if p < 0:
            raise ValueError(f"grid index {gi} is masked out (no such point)")
        return p

    def values_of(self, point: int) -> dict:
        """Parameter values (by dimension name) of a flat point."""
        return {d.name: d.values[i] for d, i in zip(self.dims, self.index[int(point)])}

    def line(self, point: int, dim: int) -> np.ndarray:
        """Valid points that share every coordinate of ``point`` except dimension ``dim``.

        Returns the flat indices ordered by their value along ``dim``; ``point`` is among them.
        """
        gi = list(self.index[int(point)])
        gi[dim] = slice(None)
        flats = self._flat_of_grid[tuple(gi)]
        return flats[flats >= 0]

    def to_grid(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Scatter per-point values (``... x P``) onto the grid (``... x grid_shape``), ``fill`` where masked."""
        values = np.asarray(values)
        if values.shape[-1] != self.n_points:
            raise ValueError(f"expected last axis of length {self.n_points}, got {values.shape}")
        out = np.full(values.shape[:-1] + self.grid_shape, fill, dtype=np.result_type(values, np.float64))
        out[(Ellipsis,) + tuple(self.index.T)] = values
        return out
