"""The state the GP engine's mixins share, declared once for the type checker.

:class:`EngineState` lists what ``LatticeKernel``, ``MarginalLikelihood`` and ``ScreenedArgmax``
use of :class:`~neuro_opt.gp.engine.BatchGP` and of each other. The mixins take it as their base
only under ``TYPE_CHECKING`` (at run time they derive from ``object``), and it lives apart from
``engine`` so that the mixins never import the engine that imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # declarations for the type checker only: nothing here runs
    from typing import Any

    import torch

    class EngineState:
        """What the mixins (LatticeKernel, MarginalLikelihood, ScreenedArgmax) use of :class:`BatchGP`
        and of each other: their base for the type checker only (at run time they derive from ``object``)."""

        # set by BatchGP.__init__
        mode: str
        opts: dict[str, Any]
        X: torch.Tensor
        b: int
        P: int
        d: int
        capacity: int
        max_jitter: float
        prior: torch.Tensor | None
        n: int
        _raw_lo: torch.Tensor
        _raw_span: torch.Tensor
        slot_of: torch.Tensor
        slot_pt: torch.Tensor
        cnt: torch.Tensor
        sum: torch.Tensor
        sumsq: torch.Tensor
        n_slots: torch.Tensor
        # set by LatticeKernel
        lattice: dict[str, Any] | None
        slot_bins: torch.Tensor | None
        # a constant of ScreenedArgmax
        SCREEN_MAX_FFT: int

        @property
        def lengthscale(self) -> torch.Tensor: ...
        @property
        def outputscale(self) -> torch.Tensor: ...
        @property
        def noise(self) -> torch.Tensor: ...
        def _scale(self) -> torch.Tensor: ...
        def _prior_all(self) -> torch.Tensor: ...
        def _bins_to_all(self, pts: torch.Tensor) -> torch.Tensor: ...
        def _pair_bins(self, data: dict[str, torch.Tensor]) -> torch.Tensor: ...
        def _slot_rows(self, pts: torch.Tensor) -> torch.Tensor: ...
        @staticmethod
        def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor: ...
        def _kernel_bins(self, ls: torch.Tensor) -> torch.Tensor: ...
        def _collapsed(self) -> dict[str, torch.Tensor]: ...
        def _chol(
            self, data: dict[str, torch.Tensor], ls: torch.Tensor, noise: torch.Tensor, os_: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]: ...
