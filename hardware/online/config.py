"""The online session's configuration (``conf/online/NAME.yaml``) and its stimulation plan.

:class:`OnlineConfig` is the schema shared with the promotion step (``sweeps.promote``);
:class:`StimulationPlan` maps each point of the search space to the stimulation it sends
and checks the whole space against the rig's limits before a session starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Mapping

import numpy as np

from hardware.journal import to_jsonable
from hardware.rig import ChannelMap, resolve_path
from hardware.safety import STIM_FIELDS, SafetyLimits, SafetyViolation, StimParams, check_keys
from neuro_opt.space import SearchSpace

MODES = ("operator", "autonomous", "dry_run")
JOURNAL_NAME = "journal.jsonl"
# keys that may change when a session is resumed; any other difference is refused
RESUMABLE_CHANGES = ("n_queries", "mode", "max_retries", "save_windows", "provenance", "name")


# ---------------------------------------------------------------------------------------------
# the online config
# ---------------------------------------------------------------------------------------------
@dataclass
class OnlineConfig:
    """An online session's configuration (``conf/online/NAME.yaml``).

    Attributes:
        name: the config's name (session folders and ids start with it).
        space: ``{dimension: [values]}`` in dimension order. Electrode
            dimensions hold array coordinates; any other dimension must be a
            stimulation parameter (``amplitude_uA``, ``frequency_hz``,
            ``pulse_width_us``, ``n_pulses``).
        electrode_dims: the dimensions mapped to a channel through ``ch2xy``.
        stimulation: fixed stimulation parameters (those not in ``space``).
        target_muscle: the muscle whose response is optimized.
        algorithm: ``{name: gpbo, kappa: ..., ...}`` for ``neuro_opt.algorithms.make``.
        n_queries: queries in the session.
        seed: the optimizer's seed.
        mode: ``operator`` (Enter per stimulation), ``autonomous`` or ``dry_run``
            (the saline test: artefacts are checked on every channel).
        max_retries: repetitions of a trial flagged invalid before it is recorded invalid.
        tell_invalid: tell the optimizer the response of a trial left invalid.
        save_windows: save every raw EMG window as ``windows/qNNNN_aN.npy``.
        prior: ``{path: estimated_map.json of an earlier session, scale, fade}`` or null.
        disabled_channels: electrodes removed from the space and the allowed set.
        provenance: free-form (source run, dataset, objective, date, code version).
    """

    name: str
    space: dict
    target_muscle: str
    algorithm: dict
    n_queries: int
    electrode_dims: list = field(default_factory=lambda: ["x", "y"])
    stimulation: dict = field(default_factory=dict)
    seed: int = 0
    mode: str = "operator"
    max_retries: int = 2
    tell_invalid: bool = False
    save_windows: bool = True
    prior: dict | None = None
    disabled_channels: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping) -> "OnlineConfig":
        names = [f.name for f in fields(cls)]
        required = ("name", "space", "target_muscle", "algorithm", "n_queries")
        check_keys(d, names, "online config", required=required)
        kw = {k: plain(v) for k, v in d.items()}
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "OnlineConfig":
        import yaml

        p = resolve_path(path, "online config")
        with open(p) as fh:
            d = yaml.safe_load(fh)
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from None

    def to_dict(self) -> dict:
        return to_jsonable(asdict(self))

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("online.name must be a non-empty string")
        if not isinstance(self.space, dict) or not self.space:
            raise ValueError("online.space must map dimension names to value lists")
        for d, vals in self.space.items():
            if not isinstance(vals, list) or not vals:
                raise ValueError(f"online.space.{d} must be a non-empty list of values")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise ValueError(f"online.space.{d} must hold finite numbers, got {vals}")
            if len(set(vals)) != len(vals):
                raise ValueError(f"online.space.{d} has duplicate values {vals}")
        if not isinstance(self.electrode_dims, list) or any(d not in self.space for d in self.electrode_dims):
            raise ValueError(
                f"online.electrode_dims {self.electrode_dims} must be dimensions of online.space {list(self.space)}"
            )
        other = [d for d in self.space if d not in self.electrode_dims]
        bad = [d for d in other if d not in STIM_FIELDS or d == "channel"]
        if bad:
            raise ValueError(
                f"online.space dimension(s) {bad} are neither electrode dimensions nor stimulation "
                f"parameters {[f for f in STIM_FIELDS if f != 'channel']}"
            )
        check_keys(self.stimulation, STIM_FIELDS, "online.stimulation")
        both = sorted(set(other) & set(self.stimulation))
        if both:
            raise ValueError(f"online: {both} are both search dimensions and fixed in online.stimulation")
        have = set(other) | set(self.stimulation) | ({"channel"} if self.electrode_dims else set())
        missing = [f for f in STIM_FIELDS if f not in have]
        if missing:
            raise ValueError(f"online.stimulation must fix {missing} (not searched)")
        if self.electrode_dims and "channel" in self.stimulation:
            raise ValueError("online.stimulation.channel is fixed but electrode_dims are searched; drop one")
        if not isinstance(self.algorithm, dict) or not isinstance(self.algorithm.get("name"), str):
            raise ValueError("online.algorithm must be a mapping with a 'name' (gpbo, extensive, greedy, ...)")
        for k in ("tell_invalid", "save_windows"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"online.{k} must be true or false, got {getattr(self, k)!r}")
        for k in ("n_queries", "seed", "max_retries"):
            v = getattr(self, k)
            if not (isinstance(v, int) and not isinstance(v, bool)) or v < (1 if k == "n_queries" else 0):
                raise ValueError(f"online.{k} must be an integer >= {1 if k == 'n_queries' else 0}, got {v!r}")
        if self.mode not in MODES:
            raise ValueError(f"online.mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.target_muscle, str):
            raise ValueError(f"online.target_muscle must be a muscle label, got {self.target_muscle!r}")
        if self.prior is not None:
            check_keys(self.prior, ("path", "scale", "fade"), "online.prior")
            if self.prior.get("path") is None:
                self.prior = None
        if not all(isinstance(c, int) and c >= 1 for c in self.disabled_channels):
            raise ValueError(f"online.disabled_channels must be channel numbers >= 1, got {self.disabled_channels}")
        if not isinstance(self.provenance, dict):
            raise ValueError("online.provenance must be a mapping")


def plain(v):
    """OmegaConf containers and tuples -> plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# the search space and the point -> stimulation mapping
# ---------------------------------------------------------------------------------------------
class StimulationPlan:
    """The session's search space and how each of its points is stimulated.

    Args:
        cfg: the online config.
        chmap: the headstage mapping (None only when no electrode dimension).
        limits: the rig's safety limits; ``disabled_channels`` are removed.
    """

    def __init__(self, cfg: OnlineConfig, chmap: ChannelMap | None, limits: SafetyLimits):
        self.cfg, self.chmap = cfg, chmap
        grid = SearchSpace(dict(cfg.space))
        self.electrode_axes = [grid.names.index(d) for d in cfg.electrode_dims]
        mask = np.ones(grid.grid_shape, dtype=bool)
        if cfg.electrode_dims:
            if chmap is None:
                raise ValueError("online.electrode_dims are searched but the rig config has no ch2xy mapping")
            chmap.check_covers(grid, cfg.electrode_dims)
            unknown = [c for c in cfg.disabled_channels if c > len(chmap)]
            if unknown:
                raise ValueError(f"online.disabled_channels {unknown} are not channels of ch2xy ({len(chmap)})")
            for p in range(grid.n_points):
                if self._channel(grid, p) in cfg.disabled_channels:
                    mask[tuple(grid.index[p])] = False
        self.space = SearchSpace(dict(cfg.space), mask=mask)
        self.limits = limits.without_channels(cfg.disabled_channels) if cfg.disabled_channels else limits

    @classmethod
    def for_rig(cls, cfg: OnlineConfig, rig_cfg: Mapping, limits: SafetyLimits) -> "StimulationPlan":
        """The plan of ``cfg`` on the rig of ``rig_cfg`` (its ``ch2xy``), under ``limits``."""
        chmap = None
        if cfg.electrode_dims:
            if rig_cfg.get("ch2xy") is None:
                raise ValueError("rig.ch2xy is required: the online space has electrode dimensions")
            chmap = ChannelMap.from_config(rig_cfg["ch2xy"], SearchSpace(dict(cfg.space)), cfg.electrode_dims)
        return cls(cfg, chmap, limits)

    def _channel(self, space: SearchSpace, point: int) -> int:
        v = space.values_of(point)
        if not self.cfg.electrode_dims:
            return int(self.cfg.stimulation["channel"])
        return self.chmap.channel_of([v[d] for d in self.cfg.electrode_dims])

    def coords(self, point: int) -> dict:
        return {k: to_jsonable(v) for k, v in self.space.values_of(point).items()}

    def params(self, point: int) -> StimParams:
        if not 0 <= int(point) < self.space.n_points:
            raise ValueError(f"point {point} outside the search space (0..{self.space.n_points - 1})")
        v = self.space.values_of(int(point))
        d = dict(self.cfg.stimulation)
        for name, val in v.items():
            if name not in self.cfg.electrode_dims:
                d[name] = val
        d["channel"] = self._channel(self.space, int(point))
        return StimParams.coerce(d)

    def preflight(self) -> None:
        """Raise :class:`SafetyViolation` if any point of the space breaks a limit."""
        bad = []
        for p in range(self.space.n_points):
            v = self.limits.violations(self.params(p))
            if v:
                bad.append(f"point {p} {self.coords(p)}: {'; '.join(v)}")
        if bad:
            raise SafetyViolation(
                f"{len(bad)} of {self.space.n_points} points of online.space break the rig's "
                f"safety limits; fix the space or disable those electrodes. First: " + " | ".join(bad[:3])
            )

    def describe(self) -> dict:
        return {
            "names": list(self.space.names),
            "values": {d.name: list(d.values) for d in self.space.dims},
            "mask": self.space.mask.astype(int).tolist(),
        }


def load_prior(path: str | Path, space: SearchSpace) -> np.ndarray:
    """A ``P`` prior map for ``space`` from an earlier session's ``estimated_map.json``."""
    p = resolve_path(path, "online.prior.path")
    data = json.loads(p.read_text())
    for k in ("dims", "points", "mean"):
        if k not in data:
            raise ValueError(f"prior {p}: missing key {k!r}; expected an estimated_map.json of an online session")
    if list(data["dims"]) != list(space.names):
        raise ValueError(
            f"prior {p} was made for dimensions {data['dims']}, this session searches "
            f"{list(space.names)}: an online config made for another search space"
        )
    table = {tuple(float(c) for c in pt): m for pt, m in zip(data["points"], data["mean"])}
    out, missing = np.empty(space.n_points), []
    for i in range(space.n_points):
        key = tuple(float(v) for v in space.values_of(i).values())
        if key not in table or table[key] is None:
            missing.append(list(key))
        else:
            out[i] = float(table[key])
    if missing:
        raise ValueError(f"prior {p} has no value for {len(missing)} point(s) of this space, e.g. {missing[:4]}")
    return out
