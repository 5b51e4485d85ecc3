"""Multi-session TBFM (seed 004, Section 4.4): one basis generator shared by sessions, a weight estimator each.

Sessions differ in their stimulation (one inter-pulse interval each, e.g. 10, 30 and 100 ms), in
their usable channels (how many, and which) and in their spatial patterns. So, as in the paper:

* **shared**: the basis generator ``G`` (an MLP of the stimulation descriptor), one set of
  parameters for every session; the descriptor tells it which session's stimulation to describe;
* **per session** ``s``: the z-scoring statistics (``C_s`` channels each) and the affine weight
  estimator ``w = W_s z + b_s`` (``B x C_s``), sized by the session's usable channels.

Session ``s``'s forecast is a plain :class:`~neuro_opt.tbfm.model.TBFM` (``model.session(s)``) whose
``generator`` *is* the shared module (the same object, not a copy), so everything a TBFM does works
per session: ``predict``, ``inputs``, metrics, and :func:`~neuro_opt.tbfm.compile.compile_tbfm`
(:func:`compile_session`), which can compile a session for any inter-pulse interval since the shared
generator makes bases for any descriptor.

Training (:func:`fit_multisession`) is the single-session alternating method
(:func:`~neuro_opt.tbfm.model.fit_tbfm`) run on all sessions at once: for fixed bases each session's
penalized weights have their exact ridge solution (per session, as a single-session TBFM would
get for the same bases); then AdamW steps on the shared generator minimize the sum over sessions of
each session's exact quadratic loss in its own bases (each scaled by its data's sum of squares, so
every session weighs the same); early stopping on the mean validation R2 over sessions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from neuro_opt.tbfm.compile import CompiledTBFM, compile_tbfm
from neuro_opt.tbfm.data import LEAD_MS, STIM_DIM, TrialSet, zscore_stats
from neuro_opt.tbfm.model import TBFM, BasisGenerator, reduced_rank, set_weights
from neuro_opt.tbfm.training import EarlyStopper, FitResult, over_budget, validation_r2


class MultiSessionTBFM(nn.Module):
    """TBFMs of several sessions sharing one basis generator.

    ``model(s, runway, stim, stim_index)``: session ``s``'s forecast, runway ``N x R x C_s`` (raw
    units), descriptors ``K x H x 3`` (or ``H x 3``) -> ``N x H x C_s``.

    Args:
        n_channels: ``C_s``, the usable channels of each session (one entry per session).
        runway: R. horizon: H. n_bases: B (shared: the generator makes B bases for every session).
        hidden, depth: the shared generator's MLP width and hidden layers.
        rank: None for full affine weight maps, or k for rank-k maps (every session).
    """

    def __init__(
        self,
        n_channels: Sequence[int],
        runway: int = 20,
        horizon: int = 164,
        n_bases: int = 12,
        *,
        hidden: int = 16,
        depth: int = 2,
        rank: int | None = None,
        stim_dim: int = STIM_DIM,
    ):
        super().__init__()
        chans = [int(c) for c in n_channels]
        if not chans:
            raise ValueError("n_channels: give the usable channel count of at least one session")
        self.runway, self.horizon, self.n_bases = int(runway), int(horizon), int(n_bases)
        self.generator = BasisGenerator(horizon, n_bases, stim_dim, hidden, depth)
        heads = []
        for c in chans:
            # the head's own generator is replaced by the shared one (a 1-unit stand-in keeps the waste small)
            head = TBFM(c, runway, horizon, n_bases, hidden=1, depth=1, rank=rank, stim_dim=stim_dim)
            head.generator = self.generator
            heads.append(head)
        self.heads = nn.ModuleList(heads)
        self.float()  # float32 throughout, whatever torch's default dtype (as TBFM)

    @property
    def n_sessions(self) -> int:
        return len(self.heads)

    @property
    def n_channels(self) -> list[int]:
        """``C_s`` of each session."""
        return [h.n_channels for h in self.session_models()]

    def session(self, s: int) -> TBFM:
        """Session ``s``'s TBFM: its own normalizer and weight estimator, the shared generator."""
        if not 0 <= s < self.n_sessions:
            raise IndexError(
                f"session {s} out of range: the model has {self.n_sessions} sessions (0..{self.n_sessions - 1})"
            )
        return self.session_models()[s]

    def session_models(self) -> list[TBFM]:
        return [h for h in self.heads if isinstance(h, TBFM)]

    def bases(self, stim: torch.Tensor) -> torch.Tensor:
        """Shared bases ``K x B x H`` for descriptors ``K x H x 3`` (any session's)."""
        return self.generator(stim)

    def forward(self, s: int, runway: torch.Tensor, stim, stim_index=None) -> torch.Tensor:
        return self.session(s)(runway, stim, stim_index)

    def predict(self, s: int, ts: TrialSet, batch_size: int = 2048):
        """Session ``s``'s forecast of every trial of ``ts``: ``trials x horizon x C_s`` (numpy float32)."""
        return self.session(s).predict(ts, batch_size)

    def penalty(self) -> torch.Tensor:
        """Sum of the sessions' Frobenius penalties."""
        return torch.stack([h.penalty() for h in self.session_models()]).sum()


def compile_session(
    model: MultiSessionTBFM, s: int, ipis=(10, 30, 100), *, lead: int = LEAD_MS, descriptors: dict | None = None
) -> CompiledTBFM:
    """Compile session ``s`` (see :func:`~neuro_opt.tbfm.compile.compile_tbfm`): its weight map folded with its
    z-scoring, and the shared generator's bases for each interval in ``ipis`` (or ``descriptors``)."""
    return compile_tbfm(model.session(s), ipis, lead=lead, descriptors=descriptors)


@dataclass
class _SessionData:
    """What the alternating fit keeps per session (float64 for the small solves)."""

    z: torch.Tensor  # N x RC z-scored runway (float32)
    D: torch.Tensor  # N x H x C residual to explain, z units (float32)
    zbar: torch.Tensor
    Dbar: torch.Tensor
    Zc: torch.Tensor
    g_eig: torch.Tensor
    Q: torch.Tensor
    d_sq: float
    stim: torch.Tensor  # 1 x H x 3


_DT = torch.float64


def _prepare(head: TBFM, train: TrialSet, s: int) -> _SessionData:
    runway, target, stim, _ = head.inputs(train)
    if stim.shape[0] != 1:
        raise ValueError(
            f"session {s}: the training set holds {stim.shape[0]} stimulation descriptors (mixed inter-pulse "
            f"intervals); the multi-session fit takes one interval per session"
        )
    N = target.shape[0]
    with torch.no_grad():
        z = head.zscore(runway).reshape(N, -1)
        D = (target - runway[:, -1:, :]) / head.std
        zbar, Dbar = z.mean(0, dtype=_DT), D.mean(0, dtype=_DT)
        Zc = z.to(_DT) - zbar
        g_eig, Q = torch.linalg.eigh(Zc.T @ Zc)
        d_sq = float(torch.linalg.vector_norm(D.reshape(-1), dtype=_DT) ** 2)
    return _SessionData(z, D, zbar, Dbar, Zc, g_eig.clamp_min(0.0), Q, d_sq, stim)


@torch.no_grad()
def _solve_weights(head: TBFM, d: _SessionData, Bm: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``head``'s weights to the exact ridge solution for bases ``Bm`` (``B x H``, float64); return the
    sufficient statistics ``S_aa`` (``B x B``) and ``S_ad`` (``B x H``) of its loss in the bases."""
    N, H, C = d.D.shape
    est = head.estimator
    M = Bm @ Bm.T
    m_eig, P = torch.linalg.eigh(M)
    m_eig = m_eig.clamp_min(0.0)
    E = torch.einsum("nhc,bh->ncb", d.D, Bm.float()).to(_DT) - (Bm @ d.Dbar).T  # centred D projected on bases
    X = (E.reshape(N, C * head.n_bases).T @ d.Zc).reshape(C, head.n_bases, -1)
    Xt = torch.einsum("bi,cbj->cij", P, X) @ d.Q
    Wt = Xt / (m_eig[None, :, None] * d.g_eig[None, None, :] + lam * N * H * C)
    W = torch.einsum("bi,cij->cbj", P, Wt) @ d.Q.T  # C x B x RC
    if est.rank is not None:
        W = reduced_rank(W, d.g_eig, d.Q, est.rank)
    bias = (torch.linalg.pinv(M) @ Bm @ d.Dbar).T - torch.einsum("cbj,j->cb", W, d.zbar)  # C x B
    set_weights(est, W.permute(1, 0, 2), bias.T)
    A = est(d.z.view(N, head.runway, C))  # N x B x C
    S_aa = torch.einsum("nbc,ndc->bd", A.to(_DT), A.to(_DT)).float()
    S_ad = torch.einsum("nbc,nhc->bh", A, d.D)
    return S_aa, S_ad


@torch.no_grad()
def _normalize_shared(generator: BasisGenerator, stims: torch.Tensor) -> None:
    """Rescale the output layer so each basis has unit RMS over time and over the sessions' descriptors
    ``stims`` (``S x H x 3``): the scale gauge that gives ``lam`` one meaning for every session."""
    rms = generator(stims).pow(2).mean((0, 2)).sqrt().clamp_min(1e-8)  # B
    out = generator.net[-1]
    out.weight.view(generator.n_bases, generator.horizon, -1).div_(rms[:, None, None])
    out.bias.view(generator.n_bases, generator.horizon).div_(rms[:, None])


def fit_multisession(
    model: MultiSessionTBFM,
    trains: Sequence[TrialSet],
    vals: Sequence[TrialSet],
    *,
    lam: float = 1e-2,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    max_iters: int = 60,
    patience: int = 8,
    inner_steps: int = 50,
    max_seconds: float | None = None,
    verbose: bool = False,
) -> FitResult:
    """Train every session's weights and the shared generator jointly; the best model is restored in place.

    Args:
        model: the model; each session's normalizer is set from its training set.
        trains, vals: one time-ordered training and validation set per session, in the model's session order,
            each with one inter-pulse interval.
        lam: Frobenius penalty on each session's weight map (as in :func:`~neuro_opt.tbfm.model.fit_tbfm`).
        lr, weight_decay, inner_steps: AdamW on the shared generator, steps per alternation.
        max_iters, patience: alternations, and alternations without a better mean validation R2 before stopping.
        max_seconds: stop after this much CPU time of this process.

    Returns:
        A :class:`~neuro_opt.tbfm.training.FitResult` (``method="multisession"``; ``best_val_r2`` is the mean
        over sessions).
    """
    heads = model.session_models()
    if len(trains) != len(heads) or len(vals) != len(heads):
        raise ValueError(
            f"give one training and one validation set per session ({len(heads)}); got {len(trains)} and {len(vals)}"
        )
    t0, c0 = time.perf_counter(), time.process_time()
    data = []
    for s, (head, tr, va) in enumerate(zip(heads, trains, vals)):
        head.check_trials(tr)
        head.check_trials(va)
        head.set_normalizer(*zscore_stats(tr))
        data.append(_prepare(head, tr, s))
    stims = torch.cat([d.stim for d in data])  # S x H x 3
    opt = torch.optim.AdamW(model.generator.parameters(), lr=lr, weight_decay=weight_decay)
    stopper = EarlyStopper(model, patience)
    history = []
    it = 0
    for it in range(1, max_iters + 1):
        _normalize_shared(model.generator, stims)
        with torch.no_grad():
            bases = model.bases(stims).to(_DT)  # S x B x H
        stats = [_solve_weights(h, d, bases[s], lam) for s, (h, d) in enumerate(zip(heads, data))]
        model.train()
        loss_val = float("nan")
        for _ in range(inner_steps):
            Bm = model.bases(stims)  # S x B x H
            # each session's relative SSE (its sum of squares scales it to ~1), averaged over sessions
            loss = sum(
                (torch.sum((S_aa @ Bm[s]) * Bm[s]) - 2.0 * torch.sum(S_ad * Bm[s])) / d.d_sq + 1.0
                for s, ((S_aa, S_ad), d) in enumerate(zip(stats, data))
            ) / len(data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_val = float(loss.detach())
        scores = [validation_r2(h, va) for h, va in zip(heads, vals)]
        score = float(sum(scores) / len(scores))
        history.append((it, loss_val, score))
        if verbose:
            print(f"alternation {it}: relative train sse {loss_val:.4f} val r2 {score:.4f} ({scores})")
        if stopper.update(it, score) or over_budget(c0, max_seconds):
            break
    stopper.restore()
    return FitResult(
        "multisession", time.perf_counter() - t0, it, stopper.best_iter, stopper.best, history, time.process_time() - c0
    )
