"""Per-experiment analyses: the published figure and the ``findings`` of an experiment.

An experiment opts in with ``report.analysis: NAME``; after the generic report
(groups, comparisons, curves) the optimization and TBFM kinds call
``sweeps.analyses.NAME.analyze(ctx)``, which draws the paper's panel into
``ctx.figures`` and returns extra summary entries, always with ``findings``:
one dict per published qualitative finding::

    {"finding": "...", "published": "...", "holds": bool, "numbers": {...}}

``holds`` is computed from the results with the rule stated in ``numbers``
(``"rule"``), never set by hand. Analyses read the Parquet table, the config and
the (regenerated) dataset only, so ``python -m sweeps.report`` can rerun them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import OmegaConf

from sweeps.schema import ConfigError, as_dict


@dataclass
class Context:
    cfg: object
    table: pa.Table
    figures: Path
    groups: list
    comparisons: list
    kind: Any  # the experiment whose report calls the analysis (it loads the datasets)

    def dataset(self, **overrides):
        """The experiment's dataset (config ``dataset`` with ``overrides``), from the kind's cache."""
        ds = OmegaConf.to_container(self.cfg.dataset, resolve=True)
        ds.update(overrides)
        return self.kind.dataset(ds)

    def grid_dataset(self, option: str | None):
        """The dataset of a ``grid.dataset`` value (a conf/dataset option name); None: ``dataset()``."""
        if option is None:
            return self.dataset()
        from sweeps.grid import load_group_option

        return self.kind.dataset(as_dict(load_group_option("dataset", option), f"grid.dataset={option}"))

    def group(self, **params) -> dict | None:
        """The summary group whose params include ``params``."""
        for g in self.groups:
            if all(g["params"].get(k) == v for k, v in params.items()):
                return g
        return None

    def comparison(self, a: str, b: str, **params) -> dict | None:
        for c in self.comparisons:
            if c["a"] == a and c["b"] == b and all(c["params"].get(k) == v for k, v in params.items()):
                return c
        return None


# brief is typed object, not str | None: mypy checks a caller's ``**numbers`` dict against every keyword
# parameter, brief included, so any narrower type rejects the analyses' dicts of numbers
def finding(text: str, published: str, holds: object, brief: object = None, **numbers: object) -> dict:
    """One entry of ``findings``; ``holds`` None when the data cannot decide (say why in numbers).
    ``brief``: the numbers behind it in a few words, for the summary's headline."""
    clean = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in numbers.items()}
    out: dict[str, object] = {
        "finding": text,
        "published": published,
        "holds": None if holds is None else bool(holds),
        "numbers": clean,
    }
    if brief:
        out["brief"] = brief
    return out


def load(name: str):
    """The analysis module ``sweeps.analyses.<name>``; a ConfigError naming the known ones if there is none."""
    known = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    if name not in known:
        raise ConfigError(f"report.analysis={name!r}: no sweeps/analyses/{name}.py; known: {', '.join(known)}")
    return importlib.import_module(f"sweeps.analyses.{name}")


def run(name: str, ctx: Context) -> dict:
    out = load(name).analyze(ctx)
    if "findings" not in out:
        raise RuntimeError(f"analysis {name} returned no findings")
    return out
