"""`python -m sweeps.launch +exp=online`: a dry run on the simulated rig through the pinned actor."""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.test_launch import launch


def test_online_session_through_the_launcher(tmp_path):
    proc = launch(tmp_path, "+exp=online", "n_queries=5", "rig.latency_s=0.01",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    summary_path = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(summary_path.read_text())
    run_dir = Path(summary["run_dir"])
    journal = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]
    assert sum(1 for r in journal if r["kind"] == "trial") >= 5
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "response"))
    assert steps == [1, 2, 3, 4, 5]
