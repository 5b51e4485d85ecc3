"""``python -m sweeps.docs RUN_DIR [RUN_DIR ...] [--out DIR]``: results pages from runs.

Per run folder (the folder of the ``summary.json`` a launch prints last) it writes
``<out>/<experiment>.md``: experiment, date, seed and scale; the headline (the summary's
``headline``, else its ``findings``); the findings table (each finding, whether it holds, the
numbers behind it); the groups' final metrics; the comparisons; the summary's other blocks; the
run's figures, copied into ``<out>/<experiment>/`` and embedded. Then it rewrites
``<out>/index.md``. A later run of an experiment replaces its page. ``--out`` defaults to
``docs/results`` (run it from the checkout's root). Every number is read from ``summary.json``;
a missing or unreadable run folder stops it before anything is written, in one line, exit 2.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

USAGE = "usage: python -m sweeps.docs RUN_DIR [RUN_DIR ...] [--out docs/results]"
KNOWN = {
    "experiment",
    "run_dir",
    "mlflow_run_id",
    "wall_s",
    "groups",
    "comparisons",
    "findings",
    "headline",
    "n_cells",
    "failed_cells",
    "seed",
    "scale",
    "date",
}
HOLDS = {True: "yes", False: "no", None: "undecided"}
HOW_TO = """Each page here is written by one command from a finished run: its numbers and figures are
that run's `summary.json` and `figures/`.

```bash
python -m sweeps.launch +exp=noise_sweep        # its last line: runs/noise_sweep/<date>/summary.json
python -m sweeps.docs runs/noise_sweep/<date>   # writes docs/results/noise_sweep.md and this index
python -m mkdocs serve                          # browse the site (or: mkdocs build --strict)
```

`python -m sweeps.docs` takes any number of run folders; a later run of an experiment replaces its page.
"""


class DocsError(Exception):
    """Bad input: a run folder that is missing or has no readable ``summary.json``."""


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    experiment: str
    date: str
    seed: Any
    scale: Any


def load_run(arg: str) -> Run:
    """The run in folder ``arg`` (or the folder of a ``summary.json`` given by path)."""
    path = Path(arg)
    if path.name == "summary.json" and path.is_file():
        path = path.parent
    if not path.is_dir():
        raise DocsError(f"RUN_DIR {arg!r}: no such folder")
    file = path / "summary.json"
    if not file.is_file():
        raise DocsError(f"RUN_DIR {arg!r}: no summary.json inside (not a run folder)")
    try:
        summary = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DocsError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("experiment"), str):
        raise DocsError(f"{file}: not a run summary (expected an object with an 'experiment' name)")
    name = summary["experiment"]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise DocsError(f"{file}: experiment name {name!r} cannot name a page")
    design = _design(path)
    return Run(
        path.resolve(),
        summary,
        name,
        str(summary.get("date") or _date(path, file)),
        summary.get("seed", design.get("seed")),
        summary.get("scale", design.get("scale")),
    )


def _design(path: Path) -> dict[str, Any]:
    """The launch's composed config (``.hydra/config.yaml``, with its seed and scale), or {}."""
    try:
        import yaml

        cfg = yaml.safe_load((path / ".hydra" / "config.yaml").read_text())
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ImportError, ValueError):
        return {}


def _date(path: Path, file: Path) -> str:
    """The launch's time from its folder name (``%Y-%m-%d_%H-%M-%S``), else the summary's mtime (UTC)."""
    if re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", path.name):
        return path.name[:10] + " " + path.name[11:].replace("-", ":")
    return datetime.fromtimestamp(file.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt(x: Any, digits: int = 4) -> str:
    """A value for a table cell: ``digits`` significant digits, yes/no, n/a for null or NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return HOLDS[x]
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return [_rounded(v) for v in x] if isinstance(x, list) else x


def _json(x: Any, pad: str = "") -> str:
    """Indented JSON whose innermost lists and objects (of plain values) stay on one line."""
    inner = list(x.values() if isinstance(x, dict) else x if isinstance(x, list) else [])
    if not any(isinstance(v, (dict, list)) for v in inner):
        return json.dumps(x, ensure_ascii=False)
    items = (
        [f"{json.dumps(k)}: {_json(v, pad + ' ')}" for k, v in x.items()]
        if isinstance(x, dict)
        else [_json(v, pad + " ") for v in x]
    )
    ends = "{}" if isinstance(x, dict) else "[]"
    return ends[0] + "\n" + ",\n".join(pad + " " + i for i in items) + "\n" + pad + ends[1]


def _collapsed(title: str, value: Any) -> list[str]:
    """A collapsed block (pymdownx.details) holding ``value`` as rounded JSON."""
    body = _json(_rounded(value)).splitlines()
    return [f'??? note "{title}"', "    ```json", *("    " + line for line in body), "    ```", ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _findings(summary: dict[str, Any]) -> list[dict[str, Any]]:
    found = summary.get("findings")
    return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []


def headline(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """(text, holds) per line: the summary's ``headline`` (strings or ``{text, holds}``), else its findings."""
    lines = summary.get("headline")
    if isinstance(lines, list) and lines:
        return [
            (str(i.get("text", i.get("finding", ""))), i.get("holds", "")) if isinstance(i, dict) else (str(i), "")
            for i in lines
        ]
    return [(str(f.get("finding", "")), f.get("holds")) for f in _findings(summary)]


def findings_section(findings: list[dict[str, Any]]) -> list[str]:
    """The findings table (scalar numbers inline), what each was judged by, its nested numbers collapsed."""
    rows, notes, blocks = [], [], []
    for i, f in enumerate(findings, 1):
        numbers: dict[str, Any] = f["numbers"] if isinstance(f.get("numbers"), dict) else {}
        cell = [
            f"{k} = {fmt(v)}"
            for k, v in numbers.items()
            if k not in ("rule", "reason") and not isinstance(v, (dict, list))
        ]
        nested = [k for k, v in numbers.items() if isinstance(v, (dict, list))]
        if nested:
            cell.append(f"{', '.join(nested)}: in numbers {i} below")
            blocks += _collapsed(f"Numbers {i}: {fmt(f.get('finding'))}", numbers)
        rows.append(
            [str(i), fmt(f.get("finding")), HOLDS.get(f.get("holds"), fmt(f.get("holds"))), "<br>".join(cell) or "-"]
        )
        for key, text in (
            ("published", f.get("published")),
            ("rule", numbers.get("rule")),
            ("reason", numbers.get("reason")),
        ):
            if text:
                notes.append(f"- **{i}, {key}:** {fmt(text)}")
    return ["## Findings", "", *_table(["#", "finding", "holds", "numbers"], rows), *notes, "", *blocks]


def records_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per record (nested objects such as ``params`` spread into their keys, lists as JSON)."""
    flat = [
        {k2: v2 for k, v in r.items() for k2, v2 in (v.items() if isinstance(v, dict) else [(k, v)])} for r in records
    ]
    cols = list(dict.fromkeys(k for r in flat for k in r))
    return _table(
        cols,
        [[fmt(json.dumps(_rounded(r.get(c))) if isinstance(r.get(c), list) else r.get(c)) for c in cols] for r in flat],
    )


def groups_section(groups: list[dict[str, Any]]) -> list[str]:
    """One row per group: its grid coordinates and its ``*_final`` metrics (the first 6 if none is final)."""
    params = list(dict.fromkeys(k for g in groups for k in g.get("params") or {}))
    metrics = list(dict.fromkeys(k for g in groups for k in g.get("metrics") or {}))
    finals = [m for m in metrics if m.endswith("_final")] or metrics[:6]
    rows = []
    for g in groups:
        values = [(g.get("metrics") or {}).get(m) for m in finals]
        rows.append(
            [fmt((g.get("params") or {}).get(k)) for k in params]
            + [fmt(g.get("n"))]
            + [
                fmt(v[0], 3) + (f" ± {fmt(v[1], 2)}" if v[1] else "") if isinstance(v, list) and len(v) == 2 else fmt(v)
                for v in values
            ]
        )
    note = "Each metric is the mean ± SEM over the group's replicates (`summary.json`, `groups`)."
    return ["## Groups", "", note, "", *_table(params + ["n"] + finals, rows)]


def write_page(run: Run, out: Path) -> Path:
    """Write ``<out>/<experiment>.md`` and copy the run's figures beside it; returns the page."""
    s, findings = run.summary, _findings(run.summary)
    meta = {
        "experiment": run.experiment,
        "date": run.date,
        "seed": run.seed,
        "scale": run.scale,
        "holds": f"{sum(f.get('holds') is True for f in findings)} of {len(findings)}" if findings else "-",
    }
    facts = [f"seed {fmt(run.seed)}", f"scale {fmt(run.scale)}"]
    if "n_cells" in s:
        facts.append(f"{fmt(s['n_cells'])} cells ({fmt(s.get('failed_cells'))} failed)")
    if s.get("mlflow_run_id"):
        facts.append(f"MLflow run `{s['mlflow_run_id']}`")
    lines = [
        "---",
        *(f"{k}: {json.dumps(v)}" for k, v in meta.items()),
        "---",
        "",
        f"# {run.experiment}",
        "",
        f"Run `{run.path}`, launched {run.date}: {', '.join(facts)}.",
        "",
        f"What the experiment runs: [Experiments](../experiments.md#{run.experiment}).",
        "",
    ]
    heads = headline(s)
    if heads:
        lines += [
            "## Headline",
            "",
            *(f"- {text}" + (f" (holds: {HOLDS.get(h, fmt(h))})" if h != "" else "") for text, h in heads),
            "",
        ]
    if findings:
        lines += findings_section(findings)
    if isinstance(s.get("groups"), list) and s["groups"]:
        lines += groups_section([g for g in s["groups"] if isinstance(g, dict)])
    figdir = out / run.experiment
    if figdir.exists():
        shutil.rmtree(figdir)
    figures = sorted((run.path / "figures").glob("*.png")) if (run.path / "figures").is_dir() else []
    if figures:
        figdir.mkdir(parents=True)
        lines += ["## Figures", "", *(f"![{f.stem}]({run.experiment}/{f.name})\n" for f in figures)]
        for fig in figures:
            shutil.copyfile(fig, figdir / fig.name)
    comparisons = s.get("comparisons")
    if isinstance(comparisons, list) and comparisons and all(isinstance(c, dict) for c in comparisons):
        lines += [
            "## Comparisons",
            "",
            "Performance points of `a` over `b` (percentage points of the metric's "
            "mean, 0-100 scale) and one-sided Wilcoxon p-values, paired by problem.",
            "",
            *records_table(comparisons),
        ]
    extra = [k for k in s if k not in KNOWN]
    lines += ["## Other blocks of the summary", ""] if extra else []
    for key in extra:
        lines += _collapsed(key, s[key])
    page = out / f"{run.experiment}.md"
    page.write_text("\n".join(lines).rstrip() + "\n")
    return page


def _front_matter(page: Path) -> dict[str, Any]:
    """The ``key: json`` lines between a page's opening ``---`` lines (what :func:`write_page` puts there)."""
    lines = page.read_text().splitlines()
    if lines[:1] != ["---"] or "---" not in lines[1:]:
        return {}
    meta: dict[str, Any] = {}
    for line in lines[1 : lines.index("---", 1)]:
        key, _, value = line.partition(": ")
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return meta


def write_index(out: Path) -> Path:
    """Rewrite ``<out>/index.md``: how pages are made, then one row per page in ``out``."""
    rows = []
    for p in sorted(p for p in out.glob("*.md") if p.name != "index.md"):
        m = _front_matter(p)
        rows.append([f"[{p.stem}]({p.name})", *(fmt(m.get(k)) for k in ("date", "seed", "scale", "holds"))])
    lines = ["# Results", "", HOW_TO]
    if rows:
        lines += ["## Pages", "", *_table(["experiment", "run date", "seed", "scale", "findings that hold"], rows)]
    else:
        lines += [
            "No results page has been generated in this checkout yet: run an experiment, then the "
            "command above on its run folder.",
            "",
        ]
    index = out / "index.md"
    index.write_text("\n".join(lines).rstrip() + "\n")
    return index


def main(argv: list[str]) -> int:
    out, runs, args = Path("docs/results"), [], iter(argv)
    try:
        for a in args:
            if a == "--out":
                out = Path(next(args, "-"))
            elif a.startswith("-"):
                raise DocsError(f"unknown option {a!r}; {USAGE}")
            else:
                runs.append(a)
        if str(out).startswith("-"):
            raise DocsError(f"--out needs a folder; {USAGE}")
        if not runs:
            raise DocsError(f"no RUN_DIR given; {USAGE}")
        loaded = [load_run(r) for r in runs]
        out.mkdir(parents=True, exist_ok=True)
    except (DocsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in loaded:
        print(write_page(run, out))
    print(write_index(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
