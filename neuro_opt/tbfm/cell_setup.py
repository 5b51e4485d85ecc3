"""Shared by the TBFM sweep cells: parameters and defaults, seeds, the simulated session, models by name."""

from __future__ import annotations

import re

import numpy as np
import torch

from neuro_opt.tbfm.base import resolve_device
from neuro_opt.tbfm.baselines import AELSTM, LSSM, fit_baseline, state_agnostic_tbfm
from neuro_opt.tbfm.data import from_session, time_ordered_split
from neuro_opt.tbfm.fsam import fit_fsam
from neuro_opt.tbfm.model import TBFM, fit_tbfm
from neuro_opt.tbfm.simulator import simulate_session

MODELS = ("tbfm", "tbfm_adamw", "tbfm_sham", "tbfm_fsam", "lssm", "ae_lstm")

#: The parameters every cell takes and their defaults (:mod:`neuro_opt.tbfm.cells` says what they mean).
DEFAULTS = dict(
    n_channels=16,
    n_session=1200,
    n_test=300,
    n_train=600,
    ipi_ms=30,
    runway_ms=20,
    lead_ms=20,
    horizon_ms=164,
    sim={},
    n_bases=12,
    lam=1e-2,
    tbfm_method="alternating",
    max_seconds=60.0,
    max_epochs=200,
    threads=1,
    val_fraction=0.1,
    lam_adamw=1e-4,
    ae_window=40,
    ae_hidden=128,
    device="cpu",
)


def resolve_params(params: dict | None, extra: dict) -> dict:
    """A cell's parameters: :data:`DEFAULTS` and the cell's own ``extra`` ones, set from ``params``
    (a key that neither has is a ValueError)."""
    p = {**DEFAULTS, **extra}
    for k, v in (params or {}).items():
        if k not in p:
            raise ValueError(f"unknown parameter {k!r}; known: {', '.join(sorted(p))}")
        p[k] = v
    return p


def derive_seed(seed: int, *salt: int) -> int:
    """A 31-bit seed derived from (seed, salt) with numpy SeedSequence."""
    return int(np.random.SeedSequence([int(seed), *salt]).generate_state(1)[0] & 0x7FFFFFFF)


def cell_session(p: dict, seed: int, return_components: bool = False):
    s = simulate_session(
        n_trials=int(p["n_session"]),
        n_channels=int(p["n_channels"]),
        ipi_ms=int(p["ipi_ms"]),
        seed=derive_seed(seed, 1),
        return_components=return_components,
        **dict(p["sim"]),
    )
    ts = from_session(s, runway_ms=int(p["runway_ms"]), lead_ms=int(p["lead_ms"]), horizon_ms=int(p["horizon_ms"]))
    return s, ts


def cell_split(p: dict, ts):
    n_train, n_test = int(p["n_train"]), int(p["n_test"])
    if n_train + n_test > ts.n_trials:
        raise ValueError(
            f"n_train ({n_train}) + n_test ({n_test}) exceeds the {ts.n_trials} stimulated trials of the "
            f"session; raise n_session"
        )
    return time_ordered_split(ts, n_train, n_test=n_test, val_fraction=float(p["val_fraction"]))


def model_rank(name: str) -> int | None:
    """The weight-map rank of a ``tbfm_rank<k>`` model name, else None."""
    m = re.fullmatch(r"tbfm_rank(\d+)", name)
    return int(m.group(1)) if m else None


def ae_variant(name: str) -> dict | None:
    """The AE-LSTM settings an ``ae_lstm_w<k>``, ``ae_lstm_h<k>`` or ``ae_lstm_w<k>_h<k>`` name sets, else None.

    Returns ``{"window": k or None, "hidden": k or None}`` (None: the cell's ``ae_window`` / ``ae_hidden``).
    """
    m = re.fullmatch(r"ae_lstm(?:_w(\d+))?(?:_h(\d+))?", name)
    if not m or name == "ae_lstm":
        return None
    return {
        "window": None if m.group(1) is None else int(m.group(1)),
        "hidden": None if m.group(2) is None else int(m.group(2)),
    }


def build_and_fit(name: str, train, val, p: dict, seed: int):
    """Build model ``name`` (see :data:`MODELS`, ``tbfm_rank<k>`` or :func:`ae_variant`) with cell parameters
    ``p`` and train it on ``p["device"]`` (an unavailable device is a one-line ValueError before any work).

    Returns ``(model, info)`` with ``info`` holding ``train_s, train_cpu_s, n_iters, best_iter, val_r2, n_bases``.
    """
    rank, variant = model_rank(name), ae_variant(name)
    # a rank-k TBFM starts from the full-rank TBFM's initialization, an AE-LSTM variant from the AE-LSTM's (paired)
    base = "tbfm" if rank else "ae_lstm" if variant else name
    torch.manual_seed(derive_seed(seed, 2, MODELS.index(base) if base in MODELS else 99))
    C, R, H = train.n_channels, int(p["runway_ms"]), int(p["horizon_ms"])
    ms, dev = float(p["max_seconds"]), resolve_device(p["device"])
    if name in ("tbfm", "tbfm_adamw", "tbfm_sham") or rank:
        model = (
            state_agnostic_tbfm(C, R, H, int(p["n_bases"]), device=dev)
            if name == "tbfm_sham"
            else TBFM(C, R, H, int(p["n_bases"]), rank=rank, device=dev)
        )
        method = "adamw" if name == "tbfm_adamw" else p["tbfm_method"]
        lam = float(p["lam"]) if method == "alternating" else float(p["lam_adamw"])
        r = fit_tbfm(model, train, val, method=method, lam=lam, max_seconds=ms, seed=derive_seed(seed, 3))
        return model, {
            "train_s": r.train_s,
            "train_cpu_s": r.train_cpu_s,
            "n_iters": r.n_iters,
            "best_iter": r.best_iter,
            "val_r2": r.best_val_r2,
            "n_bases": model.n_bases,
        }
    if name == "tbfm_fsam":
        fs = fit_fsam(
            train,
            val,
            max_bases=int(p.get("max_bases", p["n_bases"])),
            lam=float(p["lam"]),
            seed=derive_seed(seed, 4),
            device=dev,
        )
        return fs.model, {
            "train_s": fs.train_s,
            "train_cpu_s": float("nan"),
            "n_iters": len(fs.curve),
            "best_iter": fs.chosen,
            "val_r2": max(c["val_r2"] for c in fs.curve),
            "n_bases": fs.chosen,
        }
    if name in ("lssm", "ae_lstm") or variant:
        v = variant or {}
        model = (
            LSSM(C, R, H, device=dev)
            if name == "lssm"
            else AELSTM(
                C,
                R,
                H,
                window=v.get("window") or int(p["ae_window"]),
                hidden=v.get("hidden") or int(p["ae_hidden"]),
                device=dev,
            )
        )
        # same optimizer (AdamW, lr halved on validation plateaus), budget and early stopping rule for both;
        # the AE-LSTM's noisier full-horizon validation curve gets a longer patience
        r = fit_baseline(
            model,
            train,
            val,
            lr=2e-3,
            max_epochs=int(p["max_epochs"]),
            lr_patience=4,
            patience=15 if name == "lssm" else 30,
            max_seconds=ms,
            seed=derive_seed(seed, 3),
        )
        return model, {
            "train_s": r.train_s,
            "train_cpu_s": r.train_cpu_s,
            "n_iters": r.n_iters,
            "best_iter": r.best_iter,
            "val_r2": r.best_val_r2,
            "n_bases": 0,
        }
    raise ValueError(
        f"unknown model {name!r}; expected one of {', '.join(MODELS)}, tbfm_rank<k>, ae_lstm_w<k>, "
        f"ae_lstm_h<k> or ae_lstm_w<k>_h<k>"
    )
