"""What every forecast model here shares: input checks, z-scoring buffers, prediction on trial sets.

A forecast model maps a runway (``trials x runway x channels``, raw units) and
stimulation descriptors to a forecast (``trials x horizon x channels``, raw
units). Descriptors come as a table of the distinct descriptors
(``K x horizon x 3``) plus, per trial, the row to use (``trials`` int), because
a session holds only a few distinct stimulation parameterizations.

A model lives on one torch device (``device=`` at construction, CPU by default, or ``model.to(...)``
later); it trains and forecasts there: its inputs are moved to it, and :meth:`ForecastModel.predict`
brings the forecast back as a numpy array. :func:`resolve_device` turns a device name into a device
that exists here, or says what was asked and what exists.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neuro_opt.tbfm.data import STIM_DIM, TrialSet, stim_descriptor


def available_devices() -> list[str]:
    """The torch devices this process can use: ``cpu``, then ``cuda:<i>`` per visible GPU, ``mps`` on Apple GPUs."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``; None = CPU) as a
    ``torch.device`` that exists here; a one-line ValueError naming what was asked and what exists otherwise."""
    have = available_devices()
    try:
        d = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a torch device name; available here: {', '.join(have)}") from None
    if d.type == "cpu":
        return d
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (d.index or 0) >= n:
            seen = "no CUDA GPU" if n == 0 else f"{n} CUDA GPU(s) (cuda:0..cuda:{n - 1})"
            raise ValueError(
                f"device={device!r} is not available: torch sees {seen}; available here: {', '.join(have)}"
            )
        return d
    if str(d) in have or d.type in have:
        return d
    raise ValueError(f"device={device!r} is not available; available here: {', '.join(have)}")


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

    Subclasses implement ``_forward(runway, stim, stim_index)`` on checked inputs on the model's device:
    ``runway`` N x R x C (raw units), ``stim`` K x H x 3, ``stim_index`` N (int64); and end their
    ``__init__`` with ``self.float().to(self.device)`` (parameters are initialized on the CPU, so a
    seed gives the same initial model on every device).

    Args:
        n_channels: C, the usable channels the model was built for.
        runway: R, runway samples the model reads.
        horizon: H, forecast samples it produces.
        device: where the model trains and forecasts (:func:`resolve_device`; default CPU).
    """

    def __init__(
        self, n_channels: int, runway: int, horizon: int, stim_dim: int = STIM_DIM, device: str | torch.device = "cpu"
    ):
        super().__init__()
        if n_channels < 1 or runway < 1 or horizon < 1:
            raise ValueError(f"n_channels, runway and horizon must be >= 1, got {n_channels}, {runway}, {horizon}")
        self.n_channels, self.runway, self.horizon, self.stim_dim = int(n_channels), int(runway), int(horizon), stim_dim
        dev = resolve_device(device)  # fails before anything is built
        # float32 throughout, whatever torch's default dtype (the paper downcasts LFP to 32 bits too)
        self.register_buffer("mean", torch.zeros(n_channels, dtype=torch.float32, device=dev))
        self.register_buffer("std", torch.ones(n_channels, dtype=torch.float32, device=dev))

    @property
    def device(self) -> torch.device:
        """The device the model's parameters and buffers are on (where it trains and forecasts)."""
        return self.mean.device

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
        dev = self.mean.device
        runway = runway.to(device=dev, dtype=self.mean.dtype)
        stim = torch.as_tensor(stim, dtype=runway.dtype, device=dev)
        if stim.ndim == 2:
            stim = stim.unsqueeze(0)
        if stim.ndim != 3 or stim.shape[1:] != (self.horizon, self.stim_dim):
            raise ValueError(
                f"stim must be horizon x {self.stim_dim} or K x horizon x {self.stim_dim} with horizon "
                f"{self.horizon}, got shape {tuple(stim.shape)}"
            )
        if stim_index is None:
            if stim.shape[0] == 1:
                stim_index = torch.zeros(n, dtype=torch.long, device=dev)
            elif stim.shape[0] == n:
                stim_index = torch.arange(n, device=dev)
            else:
                raise ValueError(f"stim has {stim.shape[0]} descriptors for {n} trials: pass stim_index")
        stim_index = torch.as_tensor(stim_index, dtype=torch.long, device=dev)
        if stim_index.shape != (n,):
            raise ValueError(f"stim_index must have one entry per trial ({n}), got shape {tuple(stim_index.shape)}")
        if n and (stim_index.min() < 0 or stim_index.max() >= stim.shape[0]):
            raise ValueError(f"stim_index must be in 0..{stim.shape[0] - 1}")
        return runway, stim, stim_index

    def forward(self, runway: torch.Tensor, stim, stim_index=None) -> torch.Tensor:
        """Forecast ``trials x horizon x channels`` from ``runway`` (``trials x runway x channels``), on the
        model's device (inputs elsewhere are moved there).

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
        """``(runway, target, stim, stim_index)`` tensors of ``ts`` cropped to this model's runway and horizon,
        on the model's device.

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
        dev = self.mean.device
        return runway.to(dev), target.to(dev), stim.to(dev), torch.from_numpy(index).to(dev)

    @torch.no_grad()
    def predict(self, ts: TrialSet, batch_size: int = 2048) -> np.ndarray:
        """Forecast every trial of ``ts`` on the model's device: ``trials x horizon x channels`` (numpy float32)."""
        was = self.training
        self.eval()
        runway, _, stim, idx = self.inputs(ts)
        out = [
            self(runway[i : i + batch_size], stim, idx[i : i + batch_size]) for i in range(0, ts.n_trials, batch_size)
        ]
        self.train(was)
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.horizon, self.n_channels), np.float32)
