"""The rig: TDT Synapse adapter, simulated rig, loopback Synapse emulator, EMG processing,
safety limits, the crash-proof session journal, the pinned Ray actor and the online runner.

Light at import: ``tdt`` and ``ray`` are imported only by the modules that need them
(:mod:`hardware.rig.synapse`, :mod:`hardware.actor`).

    from hardware import make_rig, SafetyLimits, StimParams
    rig = make_rig(yaml.safe_load(open("conf/rig/simulated.yaml")))
    trial = rig.stimulate(StimParams(channel=5, amplitude_uA=30, frequency_hz=333.3,
                                     pulse_width_us=200, n_pulses=13))
    trial.response("TA"), trial.valid("TA")

    from hardware.online import run_online
    run_online("conf/online/example_rat.yaml", rig_cfg, mode="autonomous")
"""

from hardware.emg import EMGConfig, EMGFeature
from hardware.journal import Journal, JournalError
from hardware.rig import ChannelMap, LateResponse, Rig, RigError, Trial, make_rig
from hardware.rig.simulated import SimulatedRig
from hardware.safety import SafetyLimits, SafetyViolation, StimParams

__all__ = [
    "EMGConfig",
    "EMGFeature",
    "Journal",
    "JournalError",
    "ChannelMap",
    "LateResponse",
    "Rig",
    "RigError",
    "Trial",
    "make_rig",
    "SafetyLimits",
    "SafetyViolation",
    "StimParams",
    "SimulatedRig",
]
