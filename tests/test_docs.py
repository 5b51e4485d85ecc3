"""The README and the documentation site: the README's commands are the ones CI runs, its links
resolve, every page is in the site's nav, and results pages are generated from a run folder by
``python -m sweeps.docs`` (fast: no Ray, no MLflow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from sweeps.docs import write_index

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_is_short_and_opens_with_the_commands_ci_runs():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    first = _code_blocks(text)[0]
    # the first thing after the title is the code block
    assert text.split("\n```", 1)[0].strip() == "# neuro-opt"
    assert first.splitlines() == [
        "pip install torch==2.13.0 && pip install -e . && python -m sweeps.launch +exp=noise_sweep",
        "pip install torch==2.13.0 && pip install -e '.[dev]' && python -m pytest -q",
    ]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    *installs, tests = first.splitlines()[1].split(" && ")
    assert tests in ci  # CI runs the README's pytest part, as written
    for step in installs:  # and installs what it installs, in that order
        assert step.startswith("pip install ")
        assert f"python -m pip install --quiet {step[len('pip install '):]}" in ci
    positions = [ci.index(f"python -m pip install --quiet {s[len('pip install '):]}") for s in installs]
    assert positions == sorted(positions) and max(positions) < ci.index(tests)


def test_every_relative_link_of_the_readme_exists():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert len(local) >= 10
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav) -> list[str]:
        out = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += pages(value) if isinstance(value, list) else [value]
        return out

    nav = pages(cfg["nav"])
    assert all((ROOT / "docs" / p).is_file() for p in nav), nav
    written = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    generated = {p for p in written if p.startswith("results/") and p != "results/index.md"}
    assert written - generated == set(nav)


def test_the_committed_results_index_is_what_sweeps_docs_writes(tmp_path):
    """docs/results/index.md lists exactly the generated pages committed beside it (none on a fresh
    clone: then it says how to make them)."""
    committed = ROOT / "docs" / "results"
    for page in committed.glob("*.md"):
        if page.name != "index.md":
            shutil.copyfile(page, tmp_path / page.name)
    assert write_index(tmp_path).read_text() == (committed / "index.md").read_text()
    assert "python -m sweeps.docs" in (committed / "index.md").read_text()


def _run_folder(root: Path, experiment: str = "noise_sweep", headline: list | None = None) -> Path:
    """A run folder shaped like a launch's: summary.json, figures/*.png, .hydra/config.yaml."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = root / "runs" / experiment / "2026-01-02_03-04-05"
    (run / "figures").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(f"experiment: {experiment}\nseed: 7\nscale: paper\n")
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    fig.savefig(run / "figures" / "curves.png", dpi=40)
    plt.close(fig)
    summary = {
        "experiment": experiment, "run_dir": str(run), "mlflow_run_id": "abc123", "wall_s": 12.5,
        "groups": [{"params": {"algorithm": a, "noise": 0.5}, "n": 6,
                    "metrics": {"exploration_final": [v, 0.02], "exploitation_final": [v - 0.1, 0.03],
                                "exploration_auc": [0.5, 0.01]}} for a, v in (("gpbo", 0.91), ("extensive", 0.62))],
        "comparisons": [{"params": {"noise": 0.5}, "a": "gpbo", "b": "extensive",
                         "exploration_points_final": 29.0, "exploration_p_value": 0.0156, "n_problems": 6}],
        "findings": [
            {"finding": "GP-BO's final exploitation exceeds extensive search's at every noise level up to 50%",
             "published": "Fig. S3", "holds": True,
             "numbers": {"levels": [{"noise": 0.5, "points": 53.1}], "rule": "gpbo > extensive at every level"}},
            {"finding": "The final exploration of every algorithm falls as noise grows", "published": "Fig. S3",
             "holds": False, "numbers": {"spearman_rho": -0.7, "rule": "no step raises it"}},
        ],
        "orderings": {"rule": "a block the page shows as it is"},
        "n_cells": 12, "failed_cells": 0,
    }
    if headline is not None:
        summary["headline"] = headline
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _docs(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sweeps.docs", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_sweeps_docs_writes_a_results_page_with_findings_and_figures(tmp_path):
    run = _run_folder(tmp_path)
    proc = _docs(tmp_path, str(run))  # default --out: docs/results under the working folder
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "docs" / "results"
    page = (out / "noise_sweep.md").read_text()
    assert proc.stdout.split() == ["docs/results/noise_sweep.md", "docs/results/index.md"]
    assert "# noise_sweep" in page and "2026-01-02 03:04:05" in page
    assert "seed 7" in page and "scale paper" in page and "MLflow run `abc123`" in page
    # no headline key: the findings are the headline, then the findings table with holds and numbers
    assert page.index("## Headline") < page.index("## Findings")
    assert "- The final exploration of every algorithm falls as noise grows (holds: no)" in page
    assert re.search(r"\| 1 \| GP-BO's final exploitation .* \| yes \| levels: in numbers 1 below \|", page)
    assert "| 2 | The final exploration of every algorithm falls as noise grows | no | spearman_rho = -0.7 |" in page
    assert '"points": 53.1' in page and "**2, rule:** no step raises it" in page
    # the groups' final metrics, the comparisons, the other blocks
    assert "| algorithm | noise | n | exploration_final | exploitation_final |" in page
    assert "| gpbo | 0.5 | 6 | 0.91 ± 0.02 | 0.81 ± 0.03 |" in page
    assert "| 0.5 | gpbo | extensive | 29 | 0.0156 | 6 |" in page
    assert '??? note "orderings"' in page
    # the figure is copied beside the page and embedded
    assert "![curves](noise_sweep/curves.png)" in page
    assert (out / "noise_sweep" / "curves.png").read_bytes() == (run / "figures" / "curves.png").read_bytes()
    index = (out / "index.md").read_text()
    assert "| [noise_sweep](noise_sweep.md) | 2026-01-02 03:04:05 | 7 | paper | 1 of 2 |" in index


def test_a_headline_comes_first_and_the_index_lists_every_page(tmp_path):
    out = tmp_path / "site_results"
    first = _run_folder(tmp_path / "a", "rho_comparison")
    headline = [{"text": "Variable-rho maps are more accurate", "holds": True}, "best: gpbo at every noise level"]
    second = _run_folder(tmp_path / "b", "noise_sweep", headline=headline)
    proc = _docs(tmp_path, str(first), str(second / "summary.json"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    page = (out / "noise_sweep.md").read_text()
    lines = page[page.index("## Headline"):page.index("## Findings")].splitlines()
    assert lines[2:4] == ["- Variable-rho maps are more accurate (holds: yes)", "- best: gpbo at every noise level"]
    index = (out / "index.md").read_text()
    assert "[noise_sweep](noise_sweep.md)" in index and "[rho_comparison](rho_comparison.md)" in index


def test_a_bad_run_dir_stops_in_one_line(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    for args, says in ((["missing"], "no such folder"), (["empty"], "no summary.json"),
                       (["broken"], "not valid JSON"), ([], "no RUN_DIR"), (["--bogus"], "unknown option")):
        proc = _docs(tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: ") and says in proc.stderr
        assert not (tmp_path / "docs").exists()  # nothing written
