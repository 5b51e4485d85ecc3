"""The headstage's channel <-> electrode mapping (``ch2xy``), and paths relative to the project."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path, what: str) -> Path:
    """``path`` as given if it exists, else relative to the project root; error naming both."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"{what}: {p} does not exist")
        return p
    q = PROJECT_ROOT / p
    if q.exists():
        return q
    raise FileNotFoundError(f"{what}: neither {p.resolve()} nor {q} exists")


class ChannelMap:
    """Stimulator channel (1-based) <-> electrode coordinates on the array grid.

    Args:
        ch2xy: one coordinate tuple per channel; row ``k-1`` is channel ``k``.
            Coordinates are the values of the search space's electrode
            dimensions (1-based grid positions in the published format).
    """

    def __init__(self, ch2xy: Sequence[Sequence[float]], source: str = "<memory>"):
        rows = [tuple(r) for r in ch2xy]
        if not rows:
            raise ValueError(f"ch2xy {source}: empty mapping")
        width = len(rows[0])
        for k, r in enumerate(rows, start=1):
            if len(r) != width or width == 0:
                raise ValueError(f"ch2xy {source}: channel {k} has {len(r)} coordinates, expected {width}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r):
                raise ValueError(f"ch2xy {source}: channel {k} has non-numeric coordinates {list(r)}")
        self.source = source
        self.ch2xy: tuple[tuple[float, ...], ...] = tuple(tuple(float(v) for v in r) for r in rows)
        self._of = {}
        for k, r in enumerate(self.ch2xy, start=1):
            if r in self._of:
                raise ValueError(f"ch2xy {source}: channels {self._of[r]} and {k} both map to {list(rows[k - 1])}")
            self._of[r] = k

    @classmethod
    def load(cls, path: str | Path) -> "ChannelMap":
        """Read ``{"ch2xy": [[x, y], ...]}`` (or a bare list) from a JSON file."""
        p = resolve_path(path, "ch2xy mapping")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"ch2xy {p}: not valid JSON: {exc}") from None
        if isinstance(data, dict):
            if "ch2xy" not in data:
                raise ValueError(f"ch2xy {p}: expected a 'ch2xy' key, found {sorted(data)}")
            data = data["ch2xy"]
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise ValueError(f"ch2xy {p}: expected a list of [x, y] rows")
        return cls(data, source=str(p))

    @classmethod
    def auto(cls, space, electrode_dims: Sequence[str]) -> "ChannelMap":
        """Channels numbered in the space's point order over its electrode dimensions."""
        dims = [space.names.index(d) for d in electrode_dims]
        seen, rows = set(), []
        for p in range(space.n_points):
            v = space.values_of(p)
            key = tuple(float(v[space.names[d]]) for d in dims)
            if key not in seen:
                seen.add(key)
                rows.append(key)
        return cls(rows, source="auto")

    @classmethod
    def from_config(cls, spec, space=None, electrode_dims: Sequence[str] = ("x", "y")) -> "ChannelMap":
        """From a path, an inline list, or ``"auto"`` (needs ``space``)."""
        if spec == "auto":
            if space is None:
                raise ValueError("ch2xy 'auto' needs a search space")
            return cls.auto(space, electrode_dims)
        if isinstance(spec, (list, tuple)):
            return cls(spec, source="inline")
        if isinstance(spec, (str, Path)):
            return cls.load(spec)
        raise ValueError(f"ch2xy must be a JSON file path, a list of coordinates or 'auto', got {spec!r}")

    def __len__(self) -> int:
        return len(self.ch2xy)

    @property
    def n_dims(self) -> int:
        return len(self.ch2xy[0])

    def channel_of(self, coords: Sequence[float]) -> int:
        key = tuple(float(c) for c in coords)
        try:
            return self._of[key]
        except KeyError:
            raise ValueError(f"ch2xy {self.source}: no channel at electrode coordinates {list(coords)}") from None

    def coords_of(self, channel: int) -> tuple[float, ...]:
        if not (isinstance(channel, (int, np.integer)) and 1 <= channel <= len(self.ch2xy)):
            raise ValueError(f"ch2xy {self.source}: channel {channel!r} outside 1..{len(self.ch2xy)}")
        return self.ch2xy[int(channel) - 1]

    def check_covers(self, space, electrode_dims: Sequence[str]) -> None:
        """Raise unless every electrode position of ``space`` has exactly one channel."""
        missing = []
        if len(electrode_dims) != self.n_dims:
            raise ValueError(
                f"ch2xy {self.source} has {self.n_dims} coordinates per channel but the search space "
                f"has {len(electrode_dims)} electrode dimensions {list(electrode_dims)}"
            )
        for d in electrode_dims:
            if d not in space.names:
                raise ValueError(f"electrode dimension {d!r} is not in the search space {list(space.names)}")
        for p in range(space.n_points):
            v = space.values_of(p)
            key = tuple(float(v[d]) for d in electrode_dims)
            if key not in self._of and list(key) not in missing:
                missing.append(list(key))
        if missing:
            raise ValueError(
                f"ch2xy {self.source} does not cover the search space: no channel for "
                f"{len(missing)} electrode position(s) {missing[:6]}{' ...' if len(missing) > 6 else ''}"
            )

    def to_list(self) -> list[list[float]]:
        return [list(r) for r in self.ch2xy]
