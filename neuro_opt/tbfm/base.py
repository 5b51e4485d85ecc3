"""What every forecast model here shares: input checks, z-scoring buffers, prediction on trial sets.

A forecast model maps a runway (``trials x runway x channels``, raw units) and
stimulation descriptors to a forecast (``trials x horizon x channels``, raw
units). Descriptors come as a table of the distinct descriptors
(``K x horizon x 3``) plus, per trial, the row to use (``trials`` int), because
a session holds only a few distinct stimulation parameterizations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neuro_opt.tbfm.data import STIM_DIM, TrialSet, stim_descriptor


def as_tensors(ts: TrialSet) -> dict[str, torch.Tensor]:
    """Torch views of a trial set: ``runway`` (N x R x C), ``target`` (N x H x C),
    ``stim`` (K x H x 3) and ``stim_index`` (N)."""
    _, table, index = ts.descriptor_table()
    return {
        "runway": torch.from_numpy(np.ascontiguousarray(ts.runway, dtype=np.float32)),
        "target": torch.from_numpy(np.ascontiguousarray(ts.target, dtype=np.float32)),
        "stim": torch.from_numpy(table),
        "stim_index": torch.from_numpy(index),
    }


class ForecastModel(nn.Module):
    """Base class: shape checks, per-channel z-scoring statistics, batched prediction.

    Subclasses implement ``_forward(runway, stim, stim_index)`` on checked inputs:
    ``runway`` N x R x C (raw units), ``stim`` K x H x 3, ``stim_index`` N (int64).

    Args:
        n_channels: C, the usable channels the model was built for.
        runway: R, runway samples the model reads.
        horizon: H, forecast samples it produces.
    """

    def __init__(self, n_channels: int, runway: int, horizon: int, stim_dim: int = STIM_DIM):
        super().__init__()
        if n_channels < 1 or runway < 1 or horizon < 1:
            raise ValueError(f"n_channels, runway and horizon must be >= 1, got {n_channels}, {runway}, {horizon}")
        self.n_channels, self.runway, self.horizon, self.stim_dim = int(n_channels), int(runway), int(horizon), stim_dim
        # float32 throughout, whatever torch's default dtype (the paper downcasts LFP to 32 bits too)
        self.register_buffer("mean", torch.zeros(n_channels, dtype=torch.float32))
        self.register_buffer("std", torch.ones(n_channels, dtype=torch.float32))

    # ---- normalization ----
    def set_normalizer(self, mean, std) -> None:
        """Set the per-channel z-scoring statistics (``channels`` each), computed on the training set."""
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(np.asarray(std), dtype=torch.float32).reshape(-1)
        if mean.shape != (self.n_channels,) or std.shape != (self.n_channels,):
            raise ValueError(
                f"mean and std must have {self.n_channels} entries (one per channel), "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std <= 0).any():
            raise ValueError("std must be finite and > 0 and mean finite on every channel")
        self.mean.copy_(mean)
        self.std.copy_(std)

    # ---- checks ----
    def check_trials(self, ts: TrialSet) -> None:
        """Raise if a trial set does not match this model (channels, runway, horizon)."""
        if ts.n_channels != self.n_channels:
            raise ValueError(f"data has {ts.n_channels} channels but the model was built for {self.n_channels}")
        if ts.runway_len < self.runway:
            raise ValueError(f"model needs a runway of {self.runway} samples; the trials have {ts.runway_len}")
        if ts.horizon < self.horizon:
            raise ValueError(f"model forecasts {self.horizon} samples; the trials have a horizon of {ts.horizon}")

    def _check(self, runway, stim, stim_index):
        if not isinstance(runway, torch.Tensor):
            raise TypeError(f"runway must be a torch.Tensor (trials x runway x channels), got {type(runway).__name__}")
        if runway.ndim != 3:
            raise ValueError(f"runway must be trials x runway x channels, got shape {tuple(runway.shape)}")
        n, r, c = runway.shape
        if c != self.n_channels:
            raise ValueError(f"runway has {c} channels but the model was built for {self.n_channels}")
        if r != self.runway:
            raise ValueError(f"runway has {r} samples but the model expects {self.runway}")
        if not torch.isfinite(runway).all():
            raise ValueError("runway contains NaN or inf")
        runway = runway.to(self.mean.dtype)
        stim = torch.as_tensor(stim, dtype=runway.dtype)
        if stim.ndim == 2:
            stim = stim.unsqueeze(0)
        if stim.ndim != 3 or stim.shape[1:] != (self.horizon, self.stim_dim):
            raise ValueError(
                f"stim must be horizon x {self.stim_dim} or K x horizon x {self.stim_dim} with horizon "
                f"{self.horizon}, got shape {tuple(stim.shape)}"
            )
        if stim_index is None:
            if stim.shape[0] == 1:
                stim_index = torch.zeros(n, dtype=torch.long)
            elif stim.shape[0] == n:
                stim_index = torch.arange(n)
            else:
                raise ValueError(f"stim has {stim.shape[0]} descriptors for {n} trials: pass stim_index")
        stim_index = torch.as_tensor(stim_index, dtype=torch.long)
        if stim_index.shape != (n,):
            raise ValueError(f"stim_index must have one entry per trial ({n}), got shape {tuple(stim_index.shape)}")
        if n and (stim_index.min() < 0 or stim_index.max() >= stim.shape[0]):
            raise ValueError(f"stim_index must be in 0..{stim.shape[0] - 1}")
        return runway, stim, stim_index

    def forward(self, runway: torch.Tensor, stim, stim_index=None) -> torch.Tensor:
        """Forecast ``trials x horizon x channels`` from ``runway`` (``trials x runway x channels``).

        Args:
            runway: raw-unit runway.
            stim: one descriptor ``horizon x 3`` for all trials, one per trial
                (``trials x horizon x 3``), or a table ``K x horizon x 3`` with ``stim_index``.
            stim_index: ``trials`` row of ``stim`` for each trial.
        """
        runway, stim, stim_index = self._check(runway, stim, stim_index)
        return self._forward(runway, stim, stim_index)

    def _forward(self, runway, stim, stim_index):  # pragma: no cover - abstract
        raise NotImplementedError

    def inputs(self, ts: TrialSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(runway, target, stim, stim_index)`` tensors of ``ts`` cropped to this model's runway and horizon.

        Descriptors are built for the model's horizon (the clock spans the model's forecast).
        """
        self.check_trials(ts)
        keys, _, index = ts.descriptor_table()
        stim = torch.from_numpy(np.stack([stim_descriptor(int(k), self.horizon, ts.lead) for k in keys]))
        runway = torch.from_numpy(
            np.ascontiguousarray(ts.x[:, ts.runway_len - self.runway : ts.runway_len], dtype=np.float32)
        )
        target = torch.from_numpy(
            np.ascontiguousarray(ts.x[:, ts.runway_len : ts.runway_len + self.horizon], dtype=np.float32)
        )
        return runway, target, stim, torch.from_numpy(index)

    @torch.no_grad()
    def predict(self, ts: TrialSet, batch_size: int = 2048) -> np.ndarray:
        """Forecast every trial of ``ts``: ``trials x horizon x channels`` (numpy float32)."""
        was = self.training
        self.eval()
        runway, _, stim, idx = self.inputs(ts)
        out = [
            self(runway[i : i + batch_size], stim, idx[i : i + batch_size]) for i in range(0, ts.n_trials, batch_size)
        ]
        self.train(was)
        return torch.cat(out).numpy() if out else np.zeros((0, self.horizon, self.n_channels), np.float32)
