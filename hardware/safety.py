"""Stimulation parameters and the safety limits every one of them must pass.

:class:`StimParams` is one stimulation as the stimulator sees it (channel,
amplitude, frequency, pulse width, pulse count). :class:`SafetyLimits` holds the
protocol's caps; :meth:`SafetyLimits.check` raises :class:`SafetyViolation`
naming every violated limit. Every :class:`~hardware.rig.Rig` calls it before
anything reaches the stimulator, and the online runner calls it before anything
reaches the rig, so a violation is refused twice over and nothing is sent.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from numbers import Integral, Real
from typing import Any, Iterable, Mapping

STIM_FIELDS = ("channel", "amplitude_uA", "frequency_hz", "pulse_width_us", "n_pulses")
# the same five as a stimulator holds them (a period, not a frequency): what is read back before a trigger
STIMULATOR_KEYS = ("amplitude", "period", "channel", "pulse_width", "n_pulses")


class SafetyViolation(ValueError):
    """A stimulation outside the safety limits; nothing was sent to the stimulator."""


def holds(read_back: float, checked: float) -> bool:
    """A value read back from a stimulator is the one checked (up to the float round trip
    through the stimulator's registers)."""
    return math.isclose(float(read_back), float(checked), rel_tol=1e-5, abs_tol=1e-6)


def check_keys(d: Mapping, allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    allowed = tuple(allowed)
    unknown = sorted(set(map(str, d)) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class StimParams:
    """One stimulation: electrode channel (1-based), amplitude (uA), pulse frequency
    (Hz), pulse width per phase (us), number of pulses in the train.

    Construction does not validate values; :meth:`SafetyLimits.check` does.
    """

    channel: int
    amplitude_uA: float
    frequency_hz: float
    pulse_width_us: float
    n_pulses: int

    @classmethod
    def coerce(cls, p: "StimParams | Mapping") -> "StimParams":
        """A :class:`StimParams` from itself or a mapping with exactly the five fields."""
        if isinstance(p, StimParams):
            return p
        check_keys(p, STIM_FIELDS, "stimulation parameters", required=STIM_FIELDS)
        return cls(**{k: p[k] for k in STIM_FIELDS})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def period_ms(self) -> float:
        """Inter-pulse period in ms (the stimulator's ``PeriodA`` = 1000 / frequency)."""
        if not (_is_number(self.frequency_hz) and self.frequency_hz > 0):
            raise SafetyViolation(f"frequency_hz must be a positive number, got {self.frequency_hz!r}")
        return 1000.0 / float(self.frequency_hz)

    @property
    def charge_nC(self) -> float:
        """Charge per phase in nC: amplitude (uA) x pulse width (us) / 1000."""
        return float(self.amplitude_uA) * float(self.pulse_width_us) * 1e-3

    def pulse_times_ms(self) -> list[float]:
        """Onsets of the train's pulses relative to the stimulation onset (ms)."""
        return [i * self.period_ms for i in range(int(self.n_pulses))]

    def as_stimulator(self) -> dict:
        """The values a stimulator holds for this stimulation, by :data:`STIMULATOR_KEYS`
        (the period in ms where the parameters carry a frequency)."""
        return {
            "amplitude": float(self.amplitude_uA),
            "period": self.period_ms,
            "channel": int(self.channel),
            "pulse_width": float(self.pulse_width_us),
            "n_pulses": int(self.n_pulses),
        }

    @classmethod
    def from_stimulator(cls, held: Mapping) -> "StimParams":
        """The stimulation a stimulator holding ``held`` (:data:`STIMULATOR_KEYS`) delivers."""
        period = float(held["period"])
        return cls(
            channel=held["channel"],
            amplitude_uA=float(held["amplitude"]),
            frequency_hz=1000.0 / period if period > 0 else math.nan,
            pulse_width_us=float(held["pulse_width"]),
            n_pulses=held["n_pulses"],
        )


@dataclass(frozen=True)
class SafetyLimits:
    """Caps that no stimulation may exceed.

    Args:
        max_amplitude_uA: amplitude cap (uA); amplitudes must be > 0.
        max_charge_nC: charge per phase cap (nC) = amplitude x pulse width.
        max_frequency_hz, min_frequency_hz: pulse frequency range (Hz).
        max_pulse_width_us: pulse width cap per phase (us).
        max_n_pulses: pulses per train cap.
        n_channels: channels on the stimulator (numbered 1..n_channels).
        allowed_channels: the electrodes that may be stimulated (None: all).
        min_interval_s: minimum time between two stimulations; the rig waits
            rather than stimulating sooner.
    """

    max_amplitude_uA: float
    max_charge_nC: float
    max_frequency_hz: float
    max_pulse_width_us: float
    max_n_pulses: int
    min_frequency_hz: float = 1.0
    n_channels: int = 32
    allowed_channels: tuple[int, ...] | None = None
    min_interval_s: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "allowed_channels":
                continue
            if not (_is_number(v) and math.isfinite(v)) or v < 0:
                raise ValueError(f"safety limit {f.name} must be a finite number >= 0, got {v!r}")
        for name in (
            "max_amplitude_uA",
            "max_charge_nC",
            "max_frequency_hz",
            "max_pulse_width_us",
            "max_n_pulses",
            "n_channels",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"safety limit {name} must be > 0, got {getattr(self, name)!r}")
        if self.min_frequency_hz > self.max_frequency_hz:
            raise ValueError(
                f"safety limits: min_frequency_hz {self.min_frequency_hz} > max_frequency_hz {self.max_frequency_hz}"
            )
        if self.allowed_channels is not None:
            chans = tuple(self.allowed_channels)
            bad = [
                c
                for c in chans
                if not (isinstance(c, Integral) and not isinstance(c, bool) and 1 <= c <= self.n_channels)
            ]
            if bad:
                raise ValueError(f"safety limits: allowed_channels {bad} are not channels 1..{self.n_channels}")
            object.__setattr__(self, "allowed_channels", tuple(sorted(set(int(c) for c in chans))))

    @classmethod
    def from_dict(cls, d: Mapping) -> "SafetyLimits":
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        check_keys(d, names, "rig.limits", required=required)
        kw = dict(d)
        if kw.get("allowed_channels") is not None:
            kw["allowed_channels"] = tuple(kw["allowed_channels"])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["allowed_channels"] is not None:
            d["allowed_channels"] = list(d["allowed_channels"])
        return d

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels that may be stimulated."""
        if self.allowed_channels is None:
            return tuple(range(1, int(self.n_channels) + 1))
        return self.allowed_channels

    def without_channels(self, disabled: Iterable[int]) -> "SafetyLimits":
        """These limits with ``disabled`` channels removed from the allowed set (a lost electrode)."""
        disabled = set(int(c) for c in disabled)
        kw = asdict(self)
        kw["allowed_channels"] = tuple(c for c in self.channels if c not in disabled)
        if not kw["allowed_channels"]:
            raise ValueError("disabling these channels leaves no electrode to stimulate")
        return SafetyLimits(**kw)

    def violations(self, p: StimParams | Mapping) -> list[str]:
        """Every limit ``p`` violates, as messages (empty: safe)."""
        try:
            p = StimParams.coerce(p)
        except ValueError as exc:
            return [str(exc)]
        out = []
        numeric_ok = True
        for name in STIM_FIELDS:
            v = getattr(p, name)
            if not (_is_number(v) and math.isfinite(v)):
                out.append(f"{name} must be a finite number, got {v!r}")
                numeric_ok = False
        if not numeric_ok:
            return out
        if float(p.channel) != int(p.channel):
            out.append(f"channel must be an integer, got {p.channel!r}")
        elif int(p.channel) not in self.channels:
            out.append(f"channel {int(p.channel)} is not an allowed electrode (allowed: {_ranges(self.channels)})")
        if not 0 < p.amplitude_uA <= self.max_amplitude_uA:
            out.append(f"amplitude_uA {p.amplitude_uA} outside (0, {self.max_amplitude_uA}]")
        if not self.min_frequency_hz <= p.frequency_hz <= self.max_frequency_hz or p.frequency_hz <= 0:
            out.append(f"frequency_hz {p.frequency_hz} outside [{self.min_frequency_hz}, {self.max_frequency_hz}]")
        if not 0 < p.pulse_width_us <= self.max_pulse_width_us:
            out.append(f"pulse_width_us {p.pulse_width_us} outside (0, {self.max_pulse_width_us}]")
        if float(p.n_pulses) != int(p.n_pulses) or not 1 <= p.n_pulses <= self.max_n_pulses:
            out.append(f"n_pulses {p.n_pulses} is not an integer in [1, {self.max_n_pulses}]")
        if p.amplitude_uA > 0 and p.pulse_width_us > 0 and p.charge_nC > self.max_charge_nC * (1 + 1e-12):
            out.append(
                f"charge per phase {p.charge_nC:.4g} nC ({p.amplitude_uA} uA x {p.pulse_width_us} us) "
                f"exceeds max_charge_nC {self.max_charge_nC}"
            )
        return out

    def check(self, p: StimParams | Mapping) -> StimParams:
        """Return ``p`` as :class:`StimParams` if it is safe, else raise :class:`SafetyViolation`."""
        bad = self.violations(p)
        if bad:
            raise SafetyViolation(
                f"stimulation {dict(p) if isinstance(p, Mapping) else p.to_dict()} refused, "
                f"nothing sent: " + "; ".join(bad)
            )
        p = StimParams.coerce(p)
        return StimParams(
            int(p.channel), float(p.amplitude_uA), float(p.frequency_hz), float(p.pulse_width_us), int(p.n_pulses)
        )


def _ranges(chans: Iterable[int]) -> str:
    chans = sorted(chans)
    out, start = [], None
    for i, c in enumerate(chans):
        if start is None:
            start = c
        if i + 1 == len(chans) or chans[i + 1] != c + 1:
            out.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)
