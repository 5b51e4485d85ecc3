"""The study's trials table and figures (optimization history, importances, slices)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.tuning.space import HP_NAMES, Range, SearchSpec

if TYPE_CHECKING:
    import optuna


# =============================================================================================
# study report: trials table and figures
# =============================================================================================
def _text_choices(r: Range) -> bool:
    """A choice parameter with a non-number among its choices (its trials-table column is text)."""
    return r.choices is not None and not all(isinstance(c, (int, float)) for c in r.choices)


def write_trials_table(study: optuna.Study, spec: SearchSpec, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for t in study.trials:
        hp = t.user_attrs.get("hyperparameters", {})
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "launch": t.user_attrs.get("launch"),
            "start_point": bool(t.user_attrs.get("start_point", False)),
            "simulated_runs": t.user_attrs.get("simulated_runs"),
            "duration_s": t.user_attrs.get("duration_s"),
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "intermediate": [float(t.intermediate_values[k]) for k in sorted(t.intermediate_values)],
            "error": t.user_attrs.get("error"),
        }
        for k in spec.ranges:
            v = t.params.get(k)
            row[f"param_{k}"] = None if v is None else float(v) if isinstance(v, (int, float)) else str(v)
        for k in HP_NAMES:
            v = hp.get(k)
            row[f"hp_{k}"] = None if v is None else float(v)
        rows.append(row)
    schema = pa.schema(
        [
            ("number", pa.int64()),
            ("state", pa.string()),
            ("value", pa.float64()),
            ("launch", pa.string()),
            ("start_point", pa.bool_()),
            ("simulated_runs", pa.int64()),
            ("duration_s", pa.float64()),
            ("datetime_start", pa.string()),
            ("intermediate", pa.list_(pa.float64())),
            ("error", pa.string()),
        ]
        + [(f"param_{k}", pa.string() if _text_choices(spec.ranges[k]) else pa.float64()) for k in spec.ranges]
        + [(f"hp_{k}", pa.float64()) for k in HP_NAMES]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def pyplot():
    from sweeps.plots import plt

    return plt


def history_figure(study, published_train: float, path: Path, selected: int | None = None) -> Path:
    from optuna.trial import TrialState

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    comp = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in comp], [t.value for t in comp], s=18, color="C0", label="complete", zorder=3)
    ax.scatter(
        [t.number for t in pruned],
        [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
        s=18,
        marker="x",
        color="0.55",
        label="pruned (last report)",
        zorder=3,
    )
    best, xs, ys = -math.inf, [], []
    for t in sorted(comp, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    if published_train == published_train:
        ax.axhline(published_train, ls="--", color="C2", label="published defaults")
    if selected is not None:
        t = study.trials[selected]
        ax.plot([t.number], [t.value], marker="*", ms=14, color="C1", ls="none", label="selected (confirmed)", zorder=4)
    ax.set_xlabel("trial")
    ax.set_ylabel("training objective")
    ax.set_title(f"study {study.study_name}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def importance_figure(study, path: Path) -> dict:
    """fANOVA importances (PED-ANOVA when scikit-learn is missing); {} when too few trials to tell."""
    import optuna
    from optuna.trial import TrialState

    if sum(t.state == TrialState.COMPLETE for t in study.trials) < 3:
        return {}
    try:
        try:
            import sklearn  # noqa: F401

            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        except ImportError:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # noqa: BLE001 - e.g. a parameter that never varied
        print(f"note: no parameter importances ({exc})", file=sys.stderr)
        return {}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(imp) + 1.2))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, normalized)")
    ax.set_title(f"study {study.study_name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {k: float(v) for k, v in imp.items()}


def slice_figure(study: optuna.Study, spec: SearchSpec, path: Path) -> Path:
    """Objective vs each searched parameter over the whole range, completed trials coloured by number."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    from optuna.trial import TrialState

    plt = pyplot()
    comp = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if comp else None
    names = list(spec.ranges)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols + 0.8, 2.8 * rows), squeeze=False, sharey=True, layout="constrained"
    )
    sc = None
    for i, name in enumerate(names):
        ax = axes[i // cols, i % cols]
        pts = [(t.params[name], t.value, t.number) for t in comp if name in t.params]
        if pts:
            x: Sequence[Any]  # the parameter values, as text for a choice parameter
            x, y, n = zip(*pts)
            if spec.ranges[name].choices is not None:
                x = [str(v) for v in x]
            sc = ax.scatter(x, y, c=n, cmap="viridis", s=16, vmin=0, vmax=max(len(study.trials) - 1, 1))
        if best is not None and name in best.params:
            bx = str(best.params[name]) if spec.ranges[name].choices is not None else best.params[name]
            ax.plot([bx], [best.value], marker="*", ms=12, color="C3", ls="none")
        r = spec.ranges[name]
        if r.choices is None:
            low, high = r.bounds()
            pad = (high / low) ** 0.03 if r.log else 0.03 * (high - low)
            ax.set_xlim(*((low / pad, high * pad) if r.log else (low - pad, high + pad)))
            if r.log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                if high / low < 100:
                    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(name)
        if i % cols == 0:
            ax.set_ylabel("training objective")
    for j in range(len(names), rows * cols):
        axes[j // cols, j % cols].axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="trial", shrink=0.8)
    fig.suptitle(f"study {study.study_name} (star: best trial)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
