"""Loaders for the NeuroMOSAICS recordings as published on OSF.

Dataset 1 (cortical stimulation, NHP and rat): one MATLAB ``.mat`` file per
subject (``nhp/Cebus1_M1_190221.mat``, ``rat/rat1_M1_190716.mat``, ...), each
holding one struct named after the file stem. Fields are read **by name**: their
order differs between files (Cebus files carry extra fields). Used fields:

- ``emgs``: 1 x M cell of muscle names (``emgsabr``, abbreviations, optional);
- ``nChan``: number of channels C;
- ``ch2xy``: C x 2, 1-based grid coordinates of each channel;
- ``sorted_resp``: C x M cell, each the vector of per-repetition responses
  (10 to 28 repetitions; a numeric C x M x R array is accepted too);
- ``sorted_isvalid``: the matching 0/1 flags (0 = excluded trial);
- ``sorted_respMean``: C x M means (still include the outliers), used only
  with ``truth="stored"``.

Dataset 2 (spinal stimulation, rats): one Python pickle per array placement
(``spinal/rat0_C5_500uA.pkl``), a dict with, among others, ``ch2xy``, ``emgs``,
``sorted_resp`` (C x M x R, NaN padded, or C x M cells), ``sorted_isvalid``,
``sorted_respMean`` and ``parameters`` (holding ``nChan``). Pickles are read
with :func:`neuro_opt.datasets.safe_pickle.load`, which refuses anything but
numpy arrays and plain Python containers and scalars (a plain ``pickle.load``
would run whatever code a crafted file names).

Ground truth (``truth=``): ``"valid_mean"`` (default, mean over valid
repetitions), ``"all_mean"`` (every repetition) or ``"stored"`` (the file's
``sorted_respMean``). Repetitions and flags are kept for repetition sampling.
The stored responses keep each trial's baseline offset; ``response=
"baseline_corrected"`` recomputes them from ``sorted_evoked`` (peak in
``resp_region`` minus the mean of the 30 ms before stimulation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from neuro_opt.datasets import safe_pickle
from neuro_opt.datasets._common import (
    DataFormatError,
    as_name_list,
    check_unique,
    coords_to_grid,
    find_files,
    first_muscles,
    grid_space,
    problems_from_channels,
    require_path,
    select_files,
    select_muscles,
)
from neuro_opt.datasets.base import Dataset
from neuro_opt.datasets.matfiles import (
    cell_vectors,
    ch2xy_array,
    channel_arrays,
    check_response,
    evoked_responses,
    mat_struct,
    scalar_int,
    stored_means,
    struct_field,
)

CORTICAL_SUBFOLDERS = {"nhp": ("nhp", "monkeys", "NHP"), "rat": ("rat", "rats")}
SPINAL_SUBFOLDERS = ("spinal",)


# ----------------------------------------------------------------------------- Dataset 1


def read_cortical_mat(
    file: Path, truth: str = "valid_mean", response: str = "stored", baseline_ms: float = 30.0
) -> dict:
    """The channel arrays of one Dataset 1 ``.mat`` file.

    ``response="stored"`` reads ``sorted_resp``; ``"baseline_corrected"``
    recomputes it from ``sorted_evoked`` (:func:`~neuro_opt.datasets.matfiles.evoked_responses`).

    Returns:
        dict with ``muscles`` (M names), ``abbreviations`` (M or None),
        ``ch2xy`` (C x 2, as stored, 1-based), ``reps`` (C x M x R, NaN
        padded), ``valid`` (C x M x R bool), ``stored`` (C x M, only when
        ``truth == "stored"``, else None).
    """
    where = str(file)
    s = mat_struct(file)
    n_chan = scalar_int(struct_field(s, "nChan", where), where, "nChan")
    muscles = as_name_list(struct_field(s, "emgs", where), where, "emgs")
    check_unique(muscles, where, "emgs")
    abbr = None
    if "emgsabr" in getattr(s, "_fieldnames", []):
        abbr = as_name_list(struct_field(s, "emgsabr", where), where, "emgsabr")
        if len(abbr) != len(muscles):
            abbr = None
    ch2xy = ch2xy_array(struct_field(s, "ch2xy", where), n_chan, where)
    check_response(response, baseline_ms, where)
    if response == "stored":
        resp = cell_vectors(struct_field(s, "sorted_resp", where), n_chan, len(muscles), where, "sorted_resp")
    else:
        resp = evoked_responses(lambda f: struct_field(s, f, where), n_chan, len(muscles), where, baseline_ms)
    flags = cell_vectors(struct_field(s, "sorted_isvalid", where), n_chan, len(muscles), where, "sorted_isvalid")
    reps, valid = channel_arrays(resp, flags, where)
    stored = None
    if truth == "stored":
        stored = stored_means(struct_field(s, "sorted_respMean", where), n_chan, len(muscles), where)
    return {"muscles": muscles, "abbreviations": abbr, "ch2xy": ch2xy, "reps": reps, "valid": valid, "stored": stored}


class _ChannelLabel:
    """Names row ``i`` by its 1-based channel number, for error messages."""

    def __init__(self, channels):
        self.channels = channels

    def __call__(self, i: int) -> str:
        return f"channel {int(self.channels[i])}"


def _subject_problems(
    file: Path, arrays: dict, muscles, truth: str, ch2xy_base, meta: dict, n_muscles: int | None = None
):
    where = str(file)
    grid = coords_to_grid(arrays["ch2xy"], ch2xy_base, where)
    space, point_of_row = grid_space(grid, ("x", "y"), where)
    idx = select_muscles(arrays["muscles"], muscles, where, arrays.get("abbreviations"))
    idx = idx[: first_muscles(n_muscles, len(idx), where)]
    names = [arrays["muscles"][i] for i in idx]
    channels = np.asarray(arrays.get("channels", np.arange(1, grid.shape[0] + 1)))
    label = _ChannelLabel(channels)
    channel_of_point = np.empty(space.n_points, dtype=np.int64)
    channel_of_point[point_of_row] = channels
    stored = None if arrays["stored"] is None else arrays["stored"][:, idx]
    abbr = arrays.get("abbreviations")
    meta = dict(meta, file=where, units="mV", channel_of_point=channel_of_point.tolist())
    problems = problems_from_channels(
        file.stem,
        where,
        space,
        point_of_row,
        names,
        arrays["reps"][:, idx],
        arrays["valid"][:, idx],
        stored,
        truth,
        label,
        meta,
    )
    if abbr is not None:
        for p, i in zip(problems, idx):
            p.meta["abbreviation"] = abbr[i]
    return problems


def load_neuromosaics_cortical(
    path=None,
    species: str = "nhp",
    muscles: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
    truth: str = "valid_mean",
    n_subjects: int | None = None,
    n_muscles: int | None = None,
    response: str = "stored",
    baseline_ms: float = 30.0,
    name: str | None = None,
) -> Dataset:
    """NeuroMOSAICS Dataset 1: one problem per subject file and muscle.

    Args:
        path: a ``.mat`` file, a folder of them, or the dataset root holding
            ``nhp/`` (or ``monkeys/``) and ``rat/``.
        species: ``"nhp"`` or ``"rat"``; picks the subfolder of a dataset root.
        muscles: names (``emgs``, or ``emgsabr`` abbreviations) to keep in
            every file; None keeps all.
        subjects: file stems to keep (``Cebus1_M1_190221``); None keeps all.
        truth: ``"valid_mean"``, ``"all_mean"`` or ``"stored"``.
        n_subjects: keep the first ``n_subjects`` files (sorted by name); None: all.
        n_muscles: keep at most the first ``n_muscles`` (selected) muscles of
            each file (subjects have 4 to 8); None: all.
        response: ``"stored"`` (``sorted_resp``) or ``"baseline_corrected"``
            (peaks recomputed from ``sorted_evoked`` minus the mean of the
            ``baseline_ms`` before stimulation, see :func:`~neuro_opt.datasets.matfiles.evoked_responses`).

    Returns:
        a dataset keyed ``"<file stem>/<muscle>"``; each problem's space is the
        electrode grid (``x``, ``y`` = the 1-based ``ch2xy`` values), its
        ``repetitions``/``valid`` are ``P x R`` and ``meta["channel_of_point"]``
        gives the 1-based channel of each point.
    """
    if species not in CORTICAL_SUBFOLDERS:
        raise ValueError(f"species must be 'nhp' or 'rat', got {species!r}")
    dataset = name or f"neuromosaics_{species}"
    root = require_path(path, dataset)
    files = select_files(
        find_files(root, (".mat",), CORTICAL_SUBFOLDERS[species], dataset), subjects, dataset, n_subjects
    )
    problems = []
    for f in files:
        arrays = read_cortical_mat(f, truth=truth, response=response, baseline_ms=baseline_ms)
        problems += _subject_problems(
            f, arrays, muscles, truth, 1, {"source": "NeuroMOSAICS Dataset 1", "species": species}, n_muscles
        )
    return Dataset(
        dataset,
        problems,
        meta={
            "source": "NeuroMOSAICS Dataset 1",
            "species": species,
            "path": str(root),
            "default_response": "repetition_valid",
        },
    )


# ----------------------------------------------------------------------------- Dataset 2


def _pickle_key(data: Mapping, key: str, where: str):
    if key not in data:
        raise DataFormatError(f"{where}: missing key {key!r}; keys present: {sorted(map(str, data))}")
    return data[key]


def read_spinal_pickle(
    file: Path, truth: str = "valid_mean", response: str = "stored", baseline_ms: float = 30.0
) -> dict:
    """The channel arrays of one Dataset 2 pickle (same layout as :func:`read_cortical_mat`).

    Channels without a position (NaN ``ch2xy``) or without any recorded
    response are unused electrodes; they are left out and listed in
    ``excluded_channels`` (1-based).
    """
    where = str(file)
    try:
        data = safe_pickle.load(file)
    except safe_pickle.RefusedGlobalError as exc:
        raise DataFormatError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt file
        raise DataFormatError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, Mapping):
        raise DataFormatError(f"{where}: expected a dict of NeuroMOSAICS keys, got {type(data).__name__}")
    muscles = as_name_list(_pickle_key(data, "emgs", where), where, "emgs")
    check_unique(muscles, where, "emgs")
    raw_xy = np.asarray(_pickle_key(data, "ch2xy", where), dtype=np.float64)
    if raw_xy.ndim != 2 or raw_xy.shape[1] != 2:
        raise DataFormatError(f"{where}: ch2xy has shape {raw_xy.shape}, expected (nChan, 2)")
    n_chan = raw_xy.shape[0]
    check_response(response, baseline_ms, where)
    if response == "stored":
        resp = cell_vectors(_pickle_key(data, "sorted_resp", where), n_chan, len(muscles), where, "sorted_resp")
    else:
        resp = evoked_responses(lambda k: _pickle_key(data, k, where), n_chan, len(muscles), where, baseline_ms)
    flags = cell_vectors(_pickle_key(data, "sorted_isvalid", where), n_chan, len(muscles), where, "sorted_isvalid")
    reps, valid = channel_arrays(resp, flags, where)
    stored = None
    if truth == "stored":
        stored = stored_means(_pickle_key(data, "sorted_respMean", where), n_chan, len(muscles), where)
    params = data.get("parameters")
    n_chan_param = None
    if isinstance(params, Mapping) and "nChan" in params:
        n_chan_param = scalar_int(np.asarray(params["nChan"]).ravel()[:1], where, "parameters['nChan']")
    used = np.all(np.isfinite(raw_xy), axis=1) & np.any(np.isfinite(reps), axis=(1, 2))
    if not used.any():
        raise DataFormatError(f"{where}: no channel has both a ch2xy position and a recorded response")
    keep = np.flatnonzero(used)
    return {
        "muscles": muscles,
        "abbreviations": None,
        "ch2xy": raw_xy[keep],
        "reps": reps[keep],
        "valid": valid[keep],
        "stored": None if stored is None else stored[keep],
        "channels": keep + 1,
        "excluded_channels": (np.flatnonzero(~used) + 1).tolist(),
        "n_chan_parameter": n_chan_param,
    }


def load_neuromosaics_spinal(
    path=None,
    muscles: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
    truth: str = "valid_mean",
    ch2xy_base: int | str = "auto",
    n_subjects: int | None = None,
    n_muscles: int | None = None,
    response: str = "stored",
    baseline_ms: float = 30.0,
    name: str | None = None,
) -> Dataset:
    """NeuroMOSAICS Dataset 2: one problem per array placement (pickle) and muscle.

    Args:
        path: a ``.pkl`` file, a folder of them, or a root holding ``spinal/``.
        muscles: names to keep in every file (``"R Bi"``...); None keeps all.
        subjects: file stems to keep (``rat0_C5_500uA``); None keeps all.
        truth: ``"valid_mean"`` (the published means exclude outliers too),
            ``"all_mean"`` or ``"stored"``.
        ch2xy_base: 0, 1 or ``"auto"`` (0-based if any coordinate is 0).
        n_subjects: keep the first ``n_subjects`` files; None: all.
        n_muscles: keep at most the first ``n_muscles`` muscles of each file.
        response, baseline_ms: as for :func:`load_neuromosaics_cortical`
            (``sorted_evoked`` here is C x M x R x T, NaN padded).

    Returns:
        a dataset keyed ``"<file stem>/<muscle>"`` on the 8 x 8 epidural grid;
        ``meta["excluded_channels"]`` lists unused electrodes.
    """
    dataset = name or "neuromosaics_spinal"
    root = require_path(path, dataset)
    files = select_files(
        find_files(root, (".pkl", ".pickle"), SPINAL_SUBFOLDERS, dataset), subjects, dataset, n_subjects
    )
    problems = []
    for f in files:
        arrays = read_spinal_pickle(f, truth=truth, response=response, baseline_ms=baseline_ms)
        meta = {
            "source": "NeuroMOSAICS Dataset 2",
            "excluded_channels": arrays["excluded_channels"],
            "nChan": arrays["n_chan_parameter"],
        }
        problems += _subject_problems(f, arrays, muscles, truth, ch2xy_base, meta, n_muscles)
    return Dataset(
        dataset,
        problems,
        meta={"source": "NeuroMOSAICS Dataset 2", "path": str(root), "default_response": "repetition_valid"},
    )
