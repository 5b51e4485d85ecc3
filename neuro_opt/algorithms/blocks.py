"""Replicates of several problems in one batch: a random stream per block of replicates.

An optimizer draws its random numbers for the whole batch at once (``integers(0, P, b)``,
``random((b, P))``). :class:`BlockGenerator` stands in for its ``numpy`` Generator when the batch
is made of blocks (the replicates of several problems, or of several noise levels, that share a
search space): every draw whose first axis is the batch is drawn block by block, each block from
its own generator, so each block gets exactly the numbers it would get running alone. With the
engine's batch independence (every replicate's GP is fit and solved on its own), a block's results
are then those of running it apart (tested in tests/test_simulate_batch.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class BlockGenerator:
    """Batch-shaped draws from one generator per block of replicates.

    Args:
        generators: one ``numpy.random.Generator`` per block.
        sizes: replicates per block (``b = sum(sizes)``).

    Only draws whose first axis is the whole batch (``b`` or ``(b, ...)``) can be split by block;
    any other draw raises ``TypeError``: an optimizer that makes one would give a block other
    numbers than it gets alone (see :attr:`neuro_opt.algorithms.base.Optimizer.batch_draws`).
    """

    def __init__(self, generators: Sequence[np.random.Generator], sizes: Sequence[int]):
        if len(generators) != len(sizes) or not generators:
            raise ValueError(f"need one generator per block, got {len(generators)} for {len(sizes)} blocks")
        if any(int(n) < 1 for n in sizes):
            raise ValueError(f"every block needs >= 1 replicate, got sizes {list(sizes)}")
        self.generators = list(generators)
        self.sizes = [int(n) for n in sizes]
        self.b = sum(self.sizes)

    def _split(self, size, what: str) -> tuple[int, ...]:
        shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size or ())
        if not shape or shape[0] != self.b:
            raise TypeError(
                f"{what}(size={size!r}): a batch of {len(self.sizes)} blocks splits only draws whose first "
                f"axis is the batch ({self.b} replicates)"
            )
        return shape[1:]

    def integers(self, low, high=None, size=None) -> np.ndarray:
        """``Generator.integers`` per block, concatenated along the batch axis."""
        rest = self._split(size, "integers")
        return np.concatenate([g.integers(low, high, (n, *rest)) for g, n in zip(self.generators, self.sizes)])

    def random(self, size=None) -> np.ndarray:
        """``Generator.random`` per block, concatenated along the batch axis."""
        rest = self._split(size, "random")
        return np.concatenate([g.random((n, *rest)) for g, n in zip(self.generators, self.sizes)])
