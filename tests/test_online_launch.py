"""`python -m sweeps.launch +exp=online`: a dry run on the simulated rig through the pinned actor."""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.launching import launch


def test_online_session_through_the_launcher(tmp_path):
    proc = launch(tmp_path, "+exp=online", "n_queries=5", "rig.latency_s=0.01",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", process=True)  # the rig actor's own Ray
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


def test_online_session_against_the_emulator_over_http(tmp_path):
    """+exp=online rig=synapse: the real tdt client talks HTTP to the loopback emulator."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.launching import ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch2xy = ROOT / "conf" / "rig" / "ch2xy_rat32.json"
    emu = subprocess.Popen([sys.executable, "-m", "hardware.emulator", "--port", str(port), "--dataset",
                            "synthetic_rat", "--ch2xy", str(ch2xy)], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/system/mode", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        proc = launch(tmp_path, "+exp=online", "rig=synapse", "rig.host=127.0.0.1", f"rig.port={port}",
                      f"rig.ch2xy={ch2xy}", "n_queries=4", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                      process=True)
        summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
        run_dir = Path(summary["run_dir"])
        trials = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines() if x.strip()]
        trials = [t for t in trials if t["kind"] == "trial"]
        stims = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/emulator/stimulations",
                                                  timeout=5).read())["stimulations"]
        assert len(stims) == len(trials) >= 4  # every stimulation journaled, none unrecorded
        assert (run_dir / "estimated_map.json").is_file()
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    finally:
        emu.terminate()
        emu.wait(timeout=10)
