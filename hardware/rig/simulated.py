"""A virtual subject on the bench: EMG-like windows from any ``neuro_opt`` dataset.

:class:`SimulatedRig` stands in for the animal and the TDT hardware in dry runs
and tests, and backs the Synapse emulator (:mod:`hardware.emulator`). For one
subject of a dataset it records one buffer per muscle (the subject's problems,
in dataset order). A stimulation on channel ``c`` reaches the electrode at
``ch2xy[c]``; the subject answers with a response drawn like the dataset's
recordings (a recorded repetition when the problem has them, else the
ground-truth mean with trial-to-trial variability), rendered as a waveform:

- a motor response (a ~180 Hz burst under a Gaussian envelope peaking about
  25 ms after onset), scaled so that the published processing
  (:func:`hardware.emg.process`) returns the drawn response;
- white amplifier noise (``noise_uV`` RMS);
- a biphasic artefact at every pulse of the train (``artefact_uV``);
- for repetitions the dataset flags invalid (spontaneous activity), a burst
  before the stimulation, so the processing flags them too.

``latency_s`` is the time a window takes to arrive after the trigger (the
post-stimulus window plus transfer), so dry runs go at the rig's pace.
``saline=True`` models the saline dry run: artefacts and noise, no response.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np

from hardware import emg as emg_mod
from hardware.emg import EMGConfig
from hardware.rig.base import RIG_COMMON_KEYS, Rig, RigError
from hardware.rig.channels import ChannelMap
from hardware.safety import SafetyLimits, StimParams, check_keys

# search-space dimension names a simulated subject understands besides the electrode ones
STIM_DIM_ALIASES = {
    "amplitude_uA": "amplitude_uA",
    "amplitude": "amplitude_uA",
    "frequency_hz": "frequency_hz",
    "frequency": "frequency_hz",
    "pulse_width_us": "pulse_width_us",
    "pulse_width": "pulse_width_us",
    "n_pulses": "n_pulses",
}

DEFAULT_LIMITS = dict(
    max_amplitude_uA=100.0,
    max_charge_nC=20.0,
    max_frequency_hz=500.0,
    max_pulse_width_us=500.0,
    max_n_pulses=50,
    min_frequency_hz=1.0,
    n_channels=32,
)

_RESPONSE_PEAK_MS, _RESPONSE_SD_MS, _CARRIER_HZ = 25.0, 7.0, 180.0


class SimulatedRig(Rig):
    """A rig whose subject is one subject of a ``neuro_opt`` dataset.

    Args:
        dataset: a registered dataset name (``neuro_opt.datasets.load``) or a
            :class:`neuro_opt.datasets.Dataset`.
        dataset_kwargs: keyword arguments of the dataset builder.
        subject: the subject (default: the dataset's first).
        muscles: muscles recorded, one buffer each (default: the subject's first
            ``n_muscles``).
        n_muscles: see ``muscles``.
        ch2xy: channel mapping: a JSON path, a list, or ``"auto"`` (channels in
            the space's point order).
        electrode_dims: the space dimensions that hold electrode coordinates.
        limits, emg: safety limits (default: generous bench limits) and EMG
            processing.
        seed: seeds every draw.
        latency_s: seconds between trigger and window.
        noise_uV, artefact_uV: amplifier noise RMS and pulse artefact height (uV).
        trial_cv: trial-to-trial variability when the dataset has no repetitions.
        outlier_rate: rate of spontaneous-activity trials when the dataset has no
            repetitions (with repetitions, the dataset's own flags decide).
        saline: no response, artefacts only (the saline dry run).
    """

    kind = "simulated"

    def __init__(
        self,
        dataset="synthetic_rat",
        dataset_kwargs: Mapping | None = None,
        subject: str | None = None,
        muscles: Sequence[str] | None = None,
        n_muscles: int = 3,
        ch2xy="auto",
        electrode_dims: Sequence[str] = ("x", "y"),
        limits: SafetyLimits | None = None,
        emg: EMGConfig | None = None,
        seed: int = 0,
        latency_s: float = 0.3,
        noise_uV: float = 10.0,
        artefact_uV: float = 400.0,
        trial_cv: float = 0.2,
        outlier_rate: float = 0.03,
        saline: bool = False,
        keep_window: bool = True,
        name: str = "sim_rig",
    ):
        from neuro_opt import datasets

        ds = datasets.load(dataset, **dict(dataset_kwargs or {})) if isinstance(dataset, str) else dataset
        subjects = ds.subjects
        subject = subjects[0] if subject is None else str(subject)
        probs = [p for p in ds if p.subject == subject]
        if not probs:
            raise ValueError(f"simulated rig: dataset {ds.name!r} has no subject {subject!r}; it has {subjects}")
        by_muscle = {p.muscle: p for p in probs}
        if muscles is None:
            if not 1 <= int(n_muscles) <= len(probs):
                raise ValueError(f"simulated rig: n_muscles must be 1..{len(probs)} for subject {subject!r}")
            muscles = [p.muscle for p in probs[: int(n_muscles)]]
        missing = [m for m in muscles if m not in by_muscle]
        if missing:
            raise ValueError(f"simulated rig: subject {subject!r} has no muscle(s) {missing}; it has {list(by_muscle)}")
        self.problems = [by_muscle[m] for m in muscles]
        space = self.problems[0].space
        if any(p.space is not space and p.space.names != space.names for p in self.problems):
            raise ValueError("simulated rig: the chosen muscles do not share one search space")
        self.space, self.dataset_name, self.subject = space, ds.name, subject
        self.electrode_dims = tuple(electrode_dims)
        for d in self.electrode_dims:
            if d not in space.names:
                raise ValueError(
                    f"simulated rig: electrode dimension {d!r} is not in dataset {ds.name!r}'s space "
                    f"{list(space.names)}"
                )
        self.other_dims = {}
        for d in space.names:
            if d in self.electrode_dims:
                continue
            if d not in STIM_DIM_ALIASES:
                raise ValueError(
                    f"simulated rig: dataset dimension {d!r} is neither an electrode dimension nor a "
                    f"stimulation parameter ({sorted(STIM_DIM_ALIASES)})"
                )
            self.other_dims[d] = STIM_DIM_ALIASES[d]
        self.chmap = ChannelMap.from_config(ch2xy, space, self.electrode_dims)
        self.chmap.check_covers(space, self.electrode_dims)
        limits = limits or SafetyLimits(**{**DEFAULT_LIMITS, "n_channels": max(32, len(self.chmap))})
        super().__init__(limits, emg or EMGConfig(), muscles, keep_window=keep_window, name=name)
        for name_, v in (
            ("latency_s", latency_s),
            ("noise_uV", noise_uV),
            ("artefact_uV", artefact_uV),
            ("trial_cv", trial_cv),
            ("outlier_rate", outlier_rate),
        ):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"simulated rig: {name_} must be a number >= 0, got {v!r}")
        self.latency_s, self.noise_uV, self.artefact_uV = float(latency_s), float(noise_uV), float(artefact_uV)
        self.trial_cv, self.outlier_rate, self.saline = float(trial_cv), float(outlier_rate), bool(saline)
        self.seed = int(seed)
        self.rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x51A]))
        self._params: StimParams | None = None
        self._gains: dict[tuple, float] = {}
        self._gain(StimParams(1, 1.0, 1000.0 / 3.0, 200.0, 13))  # fail early on windows with no room

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SimulatedRig":
        keys = RIG_COMMON_KEYS + (
            "dataset",
            "dataset_kwargs",
            "subject",
            "n_muscles",
            "seed",
            "latency_s",
            "noise_uV",
            "artefact_uV",
            "trial_cv",
            "outlier_rate",
            "saline",
        )
        check_keys(cfg, keys, "rig (simulated)")
        kw = {k: v for k, v in cfg.items() if k not in ("kind", "actor", "limits", "emg")}
        if cfg.get("limits") is not None:
            kw["limits"] = SafetyLimits.from_dict(cfg["limits"])
        kw["emg"] = EMGConfig.from_dict(cfg.get("emg"))
        if kw.get("muscles") is not None:
            kw["muscles"] = list(kw["muscles"])
        if kw.get("electrode_dims") is not None:
            kw["electrode_dims"] = tuple(kw["electrode_dims"])
        else:
            kw.pop("electrode_dims", None)
        if kw.get("ch2xy") is None:
            kw.pop("ch2xy", None)
        return cls(**kw)

    # ---- the virtual subject ------------------------------------------------------------------
    def point_of(self, p: StimParams) -> int | None:
        """Flat point of the dataset space that ``p`` stimulates (None: no electrode there)."""
        try:
            coords = self.chmap.coords_of(int(p.channel))
        except ValueError:
            return None
        gi = []
        for d, dim in zip(self.space.names, self.space.dims):
            if d in self.electrode_dims:
                target = coords[self.electrode_dims.index(d)]
            else:
                target = float(getattr(p, self.other_dims[d]))
            vals = np.asarray(dim.values, dtype=np.float64)
            k = int(np.argmin(np.abs(vals - target)))
            if not math.isclose(vals[k], target, rel_tol=1e-6, abs_tol=1e-9):
                if d in self.electrode_dims:
                    return None
                raise RigError(
                    f"simulated subject: {d}={target} is not among dataset {self.dataset_name!r}'s values "
                    f"{list(dim.values)}"
                )
            gi.append(k)
        try:
            return self.space.point_of_index(gi)
        except ValueError:
            return None  # a masked grid position: no electrode

    def _template(self, t_ms: np.ndarray, center_ms: float, phase: float) -> np.ndarray:
        bump = np.exp(-0.5 * ((t_ms - center_ms) / _RESPONSE_SD_MS) ** 2)
        return bump * np.sin(2 * np.pi * _CARRIER_HZ * t_ms / 1000.0 + phase)

    def _gain(self, p: StimParams) -> float:
        """Processed response of a unit template under ``p``'s pulse train (blanking included),
        averaged over carrier phases: what waveforms are scaled by."""
        pulses = tuple(round(x, 6) for x in p.pulse_times_ms())
        if pulses not in self._gains:
            t = self.emg.times_ms()
            x = np.stack([self._template(t, _RESPONSE_PEAK_MS, ph) for ph in np.linspace(0, np.pi, 4, endpoint=False)])
            vals = [f.value for f in emg_mod.process(x / self.emg.units_per_volt, self.emg, pulses)]
            if not min(vals) > 0:
                raise ValueError("simulated rig: the EMG windows leave no room for a response; check rig.emg")
            self._gains[pulses] = float(np.mean(vals))
        return self._gains[pulses]

    def draw(self, p: StimParams) -> tuple[np.ndarray, dict]:
        """One evoked window (``muscles x samples``, volts) for ``p`` and its ground truth."""
        n, t = self.emg.n_samples, self.emg.times_ms()
        point = self.point_of(p)
        rng = self.rng
        w = rng.normal(0.0, self.noise_uV * 1e-6, size=(len(self.muscles), n))
        drawn, truth, rep_valid = [], [], []
        for m, prob in enumerate(self.problems):
            amp, ok = 0.0, True
            if point is not None and not self.saline:
                truth.append(float(prob.truth[point]))
                if prob.repetitions is not None and np.isfinite(prob.repetitions[point]).any():
                    cols = np.flatnonzero(np.isfinite(prob.repetitions[point]))
                    c = int(cols[rng.integers(cols.size)])
                    amp, ok = float(prob.repetitions[point, c]), bool(prob.valid[point, c])
                else:
                    amp = float(prob.truth[point]) * float(rng.lognormal(-0.5 * self.trial_cv**2, self.trial_cv))
                    ok = bool(rng.random() >= self.outlier_rate)
                    if not ok:
                        amp += prob.max_truth * float(rng.uniform(0.5, 2.0))
            else:
                truth.append(0.0)
            amp = max(amp, 0.0)
            drawn.append(amp)
            rep_valid.append(ok)
            scale = 1.0 / (self._gain(p) * self.emg.units_per_volt)
            if amp > 0:
                center = _RESPONSE_PEAK_MS + float(rng.normal(0.0, 1.0))
                w[m] += amp * scale * self._template(t, center, float(rng.uniform(0, 2 * np.pi)))
            if not ok:  # spontaneous activity before the stimulation
                burst = float(rng.uniform(0.15, 0.6))
                center = float(rng.uniform(-80.0, -30.0))
                w[m] += burst * scale * self._template(t, center, float(rng.uniform(0, 2 * np.pi)))
        self._add_artefacts(w, p)
        info = {"point": point, "truth": truth, "drawn": drawn, "rep_valid": rep_valid}
        return w, info

    def _add_artefacts(self, w: np.ndarray, p: StimParams) -> None:
        fs, onset, n = self.emg.fs, self.emg.onset, w.shape[1]
        amp = self.artefact_uV * 1e-6 * (3.0 if self.saline else 1.0)
        npw = max(1, int(round(float(p.pulse_width_us) * fs / 1e6)))
        tail = np.exp(-np.arange(int(math.ceil(1e-3 * fs))) / (0.3e-3 * fs))
        for tp in p.pulse_times_ms():
            a = onset + int(math.floor(tp * fs / 1000.0))
            for i, v in ((a, amp), (a + npw, -amp)):
                if 0 <= i < n:
                    w[:, i : min(i + npw, n)] += v
            b = a + 2 * npw
            if 0 <= b < n:
                k = min(tail.size, n - b)
                w[:, b : b + k] += 0.3 * amp * tail[:k]

    # ---- Rig steps ----------------------------------------------------------------------------
    def _connect(self) -> None:
        pass

    def _health(self) -> dict:
        return {
            "dataset": self.dataset_name,
            "subject": self.subject,
            "saline": self.saline,
            "n_channels": len(self.chmap),
        }

    def _apply(self, p: StimParams) -> None:
        self._params = p

    def _read_back(self, p: StimParams) -> dict:
        return self._params.as_stimulator()

    def _trigger(self, p: StimParams) -> None:
        if self._params != p:
            raise RigError("simulated rig: trigger with parameters that were not applied")

    def _read_window(self, p: StimParams) -> tuple[np.ndarray, dict]:
        if self.latency_s:
            time.sleep(self.latency_s)
        return self.draw(p)
