"""MATLAB-layout data as NeuroMOSAICS files hold it: structs read by field name, checked cell arrays of responses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from neuro_opt.datasets._common import DataFormatError


def read_mat(file: Path, **kwargs) -> dict:
    """``scipy.io.loadmat`` with errors that name the file."""
    try:
        return scipy.io.loadmat(str(file), **kwargs)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise DataFormatError(
            f"{file}: MATLAB v7.3 files are not supported; re-save with save(..., '-v7') ({exc})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a format error of this file
        raise DataFormatError(f"{file}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from None


def mat_struct(file: Path) -> object:
    """The struct named after the file stem (or the file's only variable)."""
    mat = read_mat(file, squeeze_me=False, struct_as_record=False, chars_as_strings=True)
    variables = [k for k in mat if not k.startswith("__")]
    if file.stem in mat:
        var = mat[file.stem]
    elif len(variables) == 1:
        var = mat[variables[0]]
    else:
        raise DataFormatError(f"{file}: expected a struct named {file.stem!r}; variables present: {variables}")
    if isinstance(var, np.ndarray) and var.dtype == object and var.size == 1:
        var = var.flat[0]
    if not isinstance(var, scipy.io.matlab.mat_struct):
        raise DataFormatError(f"{file}: variable {file.stem!r} is not a MATLAB struct")
    return var


def struct_field(struct, name: str, where: str):
    """Field ``name`` of a loaded MATLAB struct, by name."""
    fields = list(getattr(struct, "_fieldnames", []))
    if name not in fields:
        raise DataFormatError(f"{where}: missing field {name!r}; fields present: {fields}")
    return getattr(struct, name)


def scalar_int(value, where: str, field: str) -> int:
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size != 1 or not np.isfinite(arr[0]) or arr[0] != round(arr[0]) or arr[0] < 1:
        raise DataFormatError(f"{where}: {field} must be one positive integer, got {value!r}")
    return int(arr[0])


def cell_vectors(
    value, n_chan: int, n_muscles: int, where: str, field: str, dtype=np.float64
) -> list[list[np.ndarray]]:
    """``C x M`` nested lists of 1-D vectors from a MATLAB cell array or a numeric C x M x R array."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype == object:
        if arr.size != n_chan * n_muscles or arr.ndim > 2:
            raise DataFormatError(f"{where}: {field} has shape {arr.shape}, expected {n_chan} x {n_muscles} cells")
        if arr.ndim == 2 and arr.shape != (n_chan, n_muscles):
            if arr.shape == (n_muscles, n_chan) and n_muscles != n_chan:
                raise DataFormatError(
                    f"{where}: {field} has shape {arr.shape} (muscles x channels); "
                    f"expected channels x muscles ({n_chan} x {n_muscles})"
                )
            raise DataFormatError(f"{where}: {field} has shape {arr.shape}, expected {n_chan} x {n_muscles} cells")
        arr = arr.reshape(n_chan, n_muscles)
        out = []
        for c in range(n_chan):
            row = []
            for m in range(n_muscles):
                cell = np.asarray(arr[c, m])
                if cell.dtype == object or (cell.ndim > 1 and min(cell.shape) > 1):
                    raise DataFormatError(
                        f"{where}: {field} cell (channel {c + 1}, muscle {m + 1}) is not a vector (shape {cell.shape})"
                    )
                try:
                    row.append(cell.astype(dtype).ravel())
                except (TypeError, ValueError):
                    raise DataFormatError(
                        f"{where}: {field} cell (channel {c + 1}, muscle {m + 1}) is not numeric"
                    ) from None
            out.append(row)
        return out
    try:
        arr = arr.astype(dtype)
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: {field} is not numeric (dtype {arr.dtype})") from None
    if arr.ndim == 2 and n_muscles == 1 and arr.shape[0] == n_chan:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[:2] != (n_chan, n_muscles):
        raise DataFormatError(
            f"{where}: {field} has shape {arr.shape}, expected ({n_chan}, {n_muscles}, n_repetitions)"
        )
    return [[arr[c, m] for m in range(n_muscles)] for c in range(n_chan)]


def channel_arrays(resp_cells, valid_cells, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``C x M x R`` responses (NaN padded) and flags from nested cell vectors; lengths must match."""
    n_chan, n_muscles = len(resp_cells), len(resp_cells[0])
    width = max(v.size for row in resp_cells for v in row)
    reps = np.full((n_chan, n_muscles, width), np.nan)
    valid = np.zeros((n_chan, n_muscles, width), dtype=bool)
    for c in range(n_chan):
        for m in range(n_muscles):
            r, f = resp_cells[c][m], valid_cells[c][m]
            if r.size != f.size:
                raise DataFormatError(
                    f"{where}: channel {c + 1}, muscle {m + 1}: sorted_resp has {r.size} "
                    f"repetitions but sorted_isvalid has {f.size}"
                )
            flagged = np.isfinite(r)
            if np.any(~np.isfinite(f[flagged])):
                raise DataFormatError(f"{where}: sorted_isvalid has NaN at channel {c + 1}, muscle {m + 1}")
            reps[c, m, : r.size] = r
            valid[c, m, : r.size] = np.where(np.isfinite(f), f, 0) != 0
    return reps, valid


def stored_means(value, n_chan: int, n_muscles: int, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1 and n_muscles == 1:
        arr = arr[:, None]
    if arr.shape != (n_chan, n_muscles):
        raise DataFormatError(f"{where}: sorted_respMean has shape {arr.shape}, expected ({n_chan}, {n_muscles})")
    return arr


RESPONSES = ("stored", "baseline_corrected")


def evoked_responses(get, n_chan: int, n_muscles: int, where: str, baseline_ms: float) -> list[list[np.ndarray]]:
    """Per-repetition responses recomputed from the stored traces, baseline corrected.

    For each channel, muscle and repetition: the peak, within ``resp_region``
    (sample indices ``[start, stop)`` as stored), of the rectified trace in
    ``sorted_evoked`` minus its mean over the ``baseline_ms`` before the
    stimulation onset (the first non-zero sample of ``stimProfile``), as the
    NeuroMOSAICS figures normalize them.

    Args:
        get: ``get(field)`` returns a field of the file by name.

    Returns:
        ``C x M`` nested lists of ``R`` responses (NaN for an all-NaN trace).
    """
    profile = np.asarray(get("stimProfile"), dtype=np.float64).ravel()
    n_t = profile.size
    on = np.flatnonzero(np.abs(profile) > 1e-50)
    if on.size == 0:
        raise DataFormatError(f"{where}: stimProfile has no non-zero sample (no stimulation onset)")
    onset = int(on[0])
    fs = np.asarray(get("sampFreqEMG"), dtype=np.float64).ravel()
    if fs.size != 1 or not fs[0] > 0:
        raise DataFormatError(f"{where}: sampFreqEMG must be one positive number, got {fs.tolist()}")
    width = int(fs[0] * baseline_ms / 1000.0)
    if width < 1 or onset - width < 0:
        raise DataFormatError(
            f"{where}: a {baseline_ms} ms baseline needs {width} samples before the onset (sample {onset})"
        )
    region = np.asarray(get("resp_region"), dtype=np.float64).ravel()
    if region.size != 2 or not 0 <= region[0] < region[1] <= n_t:
        raise DataFormatError(f"{where}: resp_region must be [start, stop) within {n_t} samples, got {region.tolist()}")
    s0, s1 = int(region[0]), int(region[1])
    ev = get("sorted_evoked")
    ev = ev if isinstance(ev, np.ndarray) else np.asarray(ev)
    out = []
    for c in range(n_chan):
        row = []
        for m in range(n_muscles):
            if ev.dtype == object:
                if ev.size != n_chan * n_muscles:
                    raise DataFormatError(
                        f"{where}: sorted_evoked has shape {ev.shape}, expected {n_chan} x {n_muscles} cells"
                    )
                trace = np.asarray(ev.reshape(n_chan, n_muscles)[c, m], dtype=np.float64)
            else:
                if ev.ndim != 4 or ev.shape[:2] != (n_chan, n_muscles):
                    raise DataFormatError(
                        f"{where}: sorted_evoked has shape {ev.shape}, expected ({n_chan}, "
                        f"{n_muscles}, n_repetitions, n_samples)"
                    )
                trace = np.asarray(ev[c, m], dtype=np.float64)
            if trace.ndim == 1 and trace.size == n_t:
                trace = trace[None, :]
            if trace.ndim != 2 or n_t not in trace.shape:
                raise DataFormatError(
                    f"{where}: sorted_evoked (channel {c + 1}, muscle {m + 1}) has shape "
                    f"{trace.shape}; expected repetitions x {n_t} samples"
                )
            if trace.shape[1] != n_t:
                trace = trace.T
            base = trace[:, onset - width : onset].mean(axis=1, keepdims=True)
            seg = trace[:, s0:s1] - base
            with np.errstate(all="ignore"):
                peak = np.where(
                    np.isnan(seg).all(axis=1), np.nan, np.nanmax(np.where(np.isnan(seg), -np.inf, seg), axis=1)
                )
            row.append(peak)
        out.append(row)
    return out


def check_response(response: str, baseline_ms: float, where: str) -> None:
    """A loader's ``response`` (one of :data:`RESPONSES`) and ``baseline_ms`` options, checked."""
    if response not in RESPONSES:
        raise ValueError(f"{where}: response must be one of {RESPONSES}, got {response!r}")
    if not baseline_ms > 0:
        raise ValueError(f"{where}: baseline_ms must be > 0, got {baseline_ms!r}")


def ch2xy_array(value, n_chan: int, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape != (n_chan, 2):
        raise DataFormatError(f"{where}: ch2xy has shape {arr.shape}, expected ({n_chan}, 2)")
    return arr
