"""Inspect a dataset from its config: ``python -m sweeps.dataset describe|plot``.

Usage::

    python -m sweeps.dataset describe dataset=NAME [dataset.KEY=VALUE ...]
    python -m sweeps.dataset plot dataset=NAME [dataset.KEY=VALUE ...] [--out DIR]

``NAME`` is a file of ``conf/dataset/`` (without ``.yaml``); its key ``name`` is the
registry name and its other keys, merged with the ``dataset.KEY=VALUE``
overrides (values parsed as YAML), are passed to :func:`neuro_opt.datasets.load`.

``describe`` prints one JSON object (n_subjects, muscles, n_points, grid_shape,
n_repetitions [min, max], valid_fraction, max_response, ...). ``plot`` saves one
PNG per subject with a ground-truth heatmap per muscle (electrode maps, as
NeuroMOSAICS shows them; for larger spaces one panel per pair of dimensions,
maximized over the others) to ``--out`` (default ``./figures``), and prints the
written paths as JSON.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from neuro_opt.datasets import Dataset, describe, load

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
USAGE = (
    "usage: python -m sweeps.dataset {describe,plot} dataset=NAME [dataset.KEY=VALUE ...] [--out DIR]\n"
    f"datasets: {', '.join(sorted(p.stem for p in CONF_DIR.glob('*.yaml')))}"
)


class UsageError(ValueError):
    pass


def parse_args(argv: list[str]) -> tuple[str, str, list[str], Path]:
    """``(command, config name, overrides as KEY=VALUE, out folder)`` from the command line."""
    if not argv or argv[0] not in ("describe", "plot"):
        raise UsageError(f"first argument must be 'describe' or 'plot', got {argv[:1]}")
    command, rest = argv[0], list(argv[1:])
    config, overrides, out = None, [], Path("figures")
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--out":
            if i + 1 >= len(rest):
                raise UsageError("--out needs a folder")
            out = Path(rest[i + 1])
            i += 2
            continue
        if arg.startswith("--out="):
            out = Path(arg.split("=", 1)[1])
        elif arg.startswith("dataset="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("dataset.") and "=" in arg:
            overrides.append(arg[len("dataset.") :])
        else:
            raise UsageError(f"unexpected argument {arg!r}; expected dataset=NAME, dataset.KEY=VALUE or --out DIR")
        i += 1
    if not config:
        raise UsageError("dataset=NAME is required")
    return command, config, overrides, out


def dataset_config(config: str, overrides: list[str]) -> dict:
    """``conf/dataset/<config>.yaml`` merged with ``KEY=VALUE`` overrides, as a plain dict."""
    file = CONF_DIR / f"{config}.yaml"
    if not file.is_file():
        raise UsageError(
            f"no dataset config {str(file)!r}; available: {', '.join(sorted(p.stem for p in CONF_DIR.glob('*.yaml')))}"
        )
    try:
        cfg = OmegaConf.merge(OmegaConf.load(file), OmegaConf.from_dotlist(overrides))
    except Exception as exc:  # noqa: BLE001 - a malformed override or YAML
        raise UsageError(f"dataset config {config!r}: {exc}") from None
    out = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(out, dict) or "name" not in out:
        raise UsageError(f"{file}: must be a mapping with a 'name' key (the registry name)")
    return out


def load_from_config(config: str, overrides: list[str]) -> Dataset:
    kwargs = dataset_config(config, overrides)
    return load(kwargs.pop("name"), **kwargs)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _projection(space, values, dims):
    """``values`` (``P``) on the grid, maximized over every dimension not in ``dims`` (NaN where masked)."""
    import numpy as np

    grid = space.to_grid(values)
    other = tuple(d for d in range(space.ndim) if d not in dims)
    if not other:
        return grid
    finite = np.isfinite(grid).any(axis=other)
    return np.where(finite, np.max(np.where(np.isfinite(grid), grid, -np.inf), axis=other), np.nan)


def _draw(fig, ax, space, values, dims):
    """A heatmap over two dimensions (or a profile over one) of ``values``' max projection."""
    import matplotlib
    import numpy as np

    proj = _projection(space, values, dims)
    if len(dims) == 1:
        vals = space.dims[dims[0]].values
        ax.plot(range(len(vals)), proj, marker="o")
        ax.set_xticks(range(len(vals)), [str(v) for v in vals], fontsize=7)
        ax.set_xlabel(space.names[dims[0]])
        return
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")
    im = ax.imshow(np.ma.masked_invalid(proj.T), origin="lower", cmap=cmap, aspect="auto")
    for d, setter, ticks in ((dims[0], ax.set_xlabel, ax.set_xticks), (dims[1], ax.set_ylabel, ax.set_yticks)):
        vals = space.dims[d].values
        step = max(1, len(vals) // 8)
        ticks(range(0, len(vals), step), [str(v) for v in vals[::step]], fontsize=7)
        setter(space.names[d])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_dataset(dataset: Dataset, out: Path) -> list[Path]:
    """One PNG per subject with each muscle's ground truth.

    2-D spaces: one heatmap per muscle (an electrode map, as NeuroMOSAICS shows
    them; masked electrodes grey). Larger spaces: one row per muscle, one
    panel per pair of dimensions (``d1 x d2``, ``d3 x d4``, ..., a profile for
    a last odd one), each the maximum over the other dimensions.
    """
    from sweeps.plots import plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for subject in dataset.subjects:
        problems = [p for p in dataset if p.subject == subject]
        ndim = max(p.space.ndim for p in problems)
        if ndim <= 2:
            panels = [(p, tuple(range(p.space.ndim))) for p in problems]
            ncol = min(len(panels), 5)
        else:
            pairs = [tuple(range(k, min(k + 2, ndim))) for k in range(0, ndim, 2)]
            panels = [(p, dims) for p in problems for dims in pairs]
            ncol = len(pairs)
        nrow = -(-len(panels) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.1 * nrow), squeeze=False)
        for ax in axes.ravel()[len(panels) :]:
            ax.axis("off")
        for ax, (p, dims) in zip(axes.ravel(), panels):
            _draw(fig, ax, p.space, p.truth, dims)
            unit = p.meta.get("units") or ""
            head = f"{p.muscle} ({p.max_truth:.3g} {unit}".rstrip() + ")"
            if p.space.ndim > len(dims):
                head += "\nmax over the other dimensions"
            ax.set_title(head, fontsize=8)
        fig.suptitle(f"{dataset.name}: {subject}", fontsize=10)
        fig.tight_layout()
        path = out / f"{_safe(dataset.name)}_{_safe(subject)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, config, overrides, out = parse_args(argv)
        dataset = load_from_config(config, overrides)
    except UsageError as exc:
        print(f"error: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad dataset argument or data file: the message names it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if command == "describe":
        print(json.dumps(describe(dataset)))
    else:
        paths = plot_dataset(dataset, out)
        print(json.dumps({"figures": [str(p) for p in paths]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
