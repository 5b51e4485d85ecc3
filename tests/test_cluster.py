"""Running on a cluster: a real two-node Ray cluster and a real MLflow server, all on loopback.

The live tests start, as separate process trees that this module alone owns and ends:

* a Ray head (``ray start --head``) at 127.0.0.2 and a second Ray node (``ray start --address``)
  at 127.0.0.3, each with its own raylet, one CPU each, in a temp dir of their own and with a
  token of their own (so no other Ray instance on the machine is touched, nor ``~/.ray``);
* ``mlflow server`` on 127.0.0.1 (sqlite backend, artifacts proxied into a temp folder).

Ray maps 127.0.0.1 to the machine's routable address when it forms a multi-node cluster,
so the nodes use other loopback addresses (127.0.0.2, 127.0.0.3): every connection stays on
127.0.0.0/8.

Where a cell ran is read from the operating system: while a Ray worker executes a task its
process title is ``ray::<task name>`` (``ray::_execute`` for a cell), and each node's processes
share the session that its ``ray start`` was started in.

What cannot run here (no Docker engine, no Kubernetes) is checked statically: the cluster
launcher YAML against Ray's own schema, the KubeRay manifests against the fields their kinds
require, the image's pins against pyproject.toml, the compose file's exposure and auth.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
IMAGE = "ghcr.io/your-lab/neuro-opt:0.1.0"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"

TINY = ["+exp=noise_sweep", "n_reps=2", "n_queries=8", "grid.noise=[0.0,0.5]", "dataset.n_subjects=1",
        "dataset.n_muscles=2", "progress=false"]
# 16 GP-BO cells in 8 tasks of two (batch_reps: one engine batch per pair of cells), a few seconds
# each: long enough to lose a node in the middle of it, and a lost task takes two cells with it.
LARGER = ["+exp=noise_sweep", "n_reps=2", "n_queries=40", "grid.algorithm=[gpbo]",
          "grid.noise=[0.0,0.25,0.5,0.75]", "dataset.n_subjects=1", "dataset.n_muscles=4", "progress=false",
          "cluster.batch_reps=4"]


# --------------------------------------------------------------------------- static checks


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_cluster_launcher_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # as written
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` fills and checks it

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the head runs the driver, not cells
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    autoscaling_cpu = [t for t in workers.values() if t["max_workers"] > t.get("min_workers", 0)
                       and "GPU" not in t["resources"] and "g5" not in t["node_config"]["InstanceType"]]
    assert autoscaling_cpu, "no autoscaling CPU worker type"
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu and all(t.get("min_workers", 0) == 0 for t in gpu), "GPU workers must be optional (min_workers 0)"
    rig = [t for t in workers.values() if t["resources"].get("tdt_rig") == 1]
    assert len(rig) == 1 and rig[0]["max_workers"] == 0  # the rig PC joins by hand, never launched
    assert config["docker"]["image"] == IMAGE
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in starts
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert config["setup_commands"] == []  # everything comes from the image, nothing installed at boot


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label (names of containers, groups, ports)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def _check_pod_template(template: dict, where: str) -> list[dict]:
    spec = template["spec"]
    containers = spec["containers"]
    assert containers, where
    for c in containers:
        assert _NAME.match(c["name"]), f"{where}: container name {c['name']!r}"
        assert isinstance(c["image"], str) and ":" in c["image"], f"{where}: image must carry a tag"
        for e in c.get("env", []):
            assert set(e) in ({"name", "value"}, {"name", "valueFrom"}), f"{where}: env {e}"
            assert "value" not in e or isinstance(e["value"], str), f"{where}: env values are strings: {e}"
        for p in c.get("ports", []):
            assert isinstance(p["containerPort"], int) and len(p["name"]) <= 15 and _NAME.match(p["name"]), where
        for kind in ("requests", "limits"):
            for res, q in c.get("resources", {}).get(kind, {}).items():
                assert isinstance(q, str) and _QUANTITY.match(q), f"{where}: {kind}.{res}={q!r} is not a quantity string"
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in spec.get("volumes", [])}, f"{where}: mount of an undeclared volume"
    return containers


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == _pins()["ray"], f"{where}: rayVersion must match the image's ray"
    assert spec["authOptions"] == {"mode": "token"}, f"{where}: Ray token authentication"
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), f"{where}: rayStartParams are strings"
    assert head["rayStartParams"].get("num-cpus") == "0"
    (head_container,) = _check_pod_template(head["template"], f"{where} head")
    assert head_container["image"] == IMAGE
    groups = spec["workerGroupSpecs"]
    for g in groups:
        w = f"{where} group {g['groupName']}"
        assert _NAME.match(g["groupName"]), w
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], w
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), f"{w}: rayStartParams are strings"
        _check_pod_template(g["template"], w)
    assert any(g["maxReplicas"] > g["minReplicas"] for g in groups), f"{where}: no autoscaling group"


def test_kuberay_manifests_have_the_fields_their_kinds_require():
    docs = {d["kind"]: d for f in sorted((INFRA / "k8s").glob("*.yaml")) for d in _docs(f)}
    assert set(docs) == {"RayCluster", "RayJob", "PersistentVolumeClaim"}
    for kind, d in docs.items():
        assert d["apiVersion"] == ("v1" if kind == "PersistentVolumeClaim" else "ray.io/v1"), kind
        name = d["metadata"].get("name") or d["metadata"]["generateName"].rstrip("-")
        assert _NAME.match(name) and len(name) <= 47, f"{kind}: name {name!r}"  # KubeRay derives pod names from it

    pvc = docs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and _QUANTITY.match(pvc["spec"]["resources"]["requests"]["storage"])

    cluster = docs["RayCluster"]["spec"]
    _check_ray_cluster_spec(cluster, "RayCluster")
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = [g for g in groups.values()
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and all(g["minReplicas"] == 0 for g in gpu)
    rig = [g for g in groups.values() if "tdt_rig" in g["rayStartParams"].get("resources", "")]
    assert len(rig) == 1 and rig[0]["maxReplicas"] == 1
    assert json.loads(json.loads(rig[0]["rayStartParams"]["resources"])) == {"tdt_rig": 1}  # KubeRay's quoting

    job = docs["RayJob"]["spec"]
    _check_ray_cluster_spec(job["rayClusterSpec"], "RayJob")
    assert "python -m sweeps.launch +exp=noise_sweep cluster=remote tracking=server" in job["entrypoint"]
    assert job["shutdownAfterJobFinishes"] is True and isinstance(job["ttlSecondsAfterFinished"], int)
    for spec in (cluster, job["rayClusterSpec"]):  # run folders survive the pod, for resume=
        head = spec["headGroupSpec"]["template"]["spec"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in head["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {pvc["metadata"]["name"]}
        mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
        assert "/home/ray/neuro-opt/runs" in mounts


def _pins() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "docker" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z,-]+\])?==([0-9][0-9A-Za-z.+-]*)", line)
            assert m, f"requirements.txt: {line!r} is not pinned with =="
            pins[m.group(1).lower()] = m.group(3)
    return pins


def test_image_pins_every_dependency_of_pyproject_within_its_range():
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    pins = _pins()
    deps = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for req in deps:
        assert req.name.lower() in pins, f"{req.name} is a dependency in pyproject.toml but not pinned in the image"
        assert req.specifier.contains(pins[req.name.lower()]), f"{req.name}=={pins[req.name.lower()]} outside {req.specifier}"
    ci_torch = re.search(r"torch==([0-9.]+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert pins["torch"] == ci_torch == "2.13.0"

    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    torch_step = dockerfile.index('pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"')
    assert dockerfile.index("pip install -r /tmp/requirements.txt") > torch_step  # CPU torch first
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    assert re.search(r"^FROM python:3\.\d+\.\d+-slim", dockerfile, re.M)  # a pinned base, not :latest
    # what the image copies is what the launcher and workers import, and nothing else
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    for copied in ("neuro_opt", "sweeps", "hardware", "conf"):
        assert f"COPY --chown=ray:users {copied} ./{copied}" in dockerfile and f"!{copied}/" in ignore
    # setup.py builds the compiled refit routine: copied, with a compiler, and checked to load
    assert "setup.py" in dockerfile.split("COPY --chown=ray:users pyproject.toml")[1].splitlines()[0] and "!setup.py" in ignore
    assert " gcc " in dockerfile and "refit_terms.available()" in dockerfile


def _published_ports(service: dict) -> list[tuple[str, str]]:
    out = []
    for p in service.get("ports", []):
        resolved = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", p)  # compose's ${VAR:-default}, VAR unset
        host_ip, host_port, _ = resolved.rsplit(":", 2)
        out.append((host_ip, host_port))
    return out


def test_mlflow_compose_binds_loopback_uses_postgres_and_s3_and_turns_basic_auth_on():
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    published = {name: _published_ports(s) for name, s in services.items()}
    assert published["mlflow"] and all(ip == "127.0.0.1" for ports in published.values() for ip, _ in ports)
    assert "9000" not in {p for _, p in published["minio"]}  # S3 API: only through MLflow
    for name, s in services.items():
        if "image" in s and "build" not in s:
            image = s["image"]
            assert re.search(r":[^:/]+$", image) and not image.endswith(":latest"), f"{name}: pin {image}"
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "MLFLOW_S3_ENDPOINT_URL" in mlflow["environment"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    for secret in ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert f"${{{secret}:?" in (INFRA / "mlflow" / "compose.yaml").read_text(), f"{secret} must be required"

    # users read everything and write only where they created or were granted: never EDIT by default
    assert mlflow["environment"]["MLFLOW_DEFAULT_PERMISSION"] == "${MLFLOW_DEFAULT_PERMISSION:-READ}"
    entry = (INFRA / "mlflow" / "entrypoint.sh").read_text()
    assert "default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}" in entry
    assert "--app-name basic-auth" in entry and "--serve-artifacts" in entry
    assert "postgresql+psycopg://mlflow:" in entry and "/mlflow_auth" in entry and "--artifacts-destination" in entry
    init = (INFRA / "mlflow" / "postgres-init.sh").read_text()
    for db in ("mlflow", "mlflow_auth", "optuna"):
        assert f"CREATE DATABASE {db} " in init
    server_image = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert f'"mlflow[auth]=={_pins()["mlflow"]}"' in server_image  # server and clients on one version
    assert ".env" in (INFRA / "mlflow" / ".gitignore").read_text().split()


def test_remote_cluster_and_server_tracking_configs_resolve_from_the_environment(monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sweeps.schema  # noqa: F401 - registers the schema

    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "NEURO_OPT_WORKING_DIR"):
        monkeypatch.delenv(var, raising=False)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=noise_sweep", "cluster=remote", "tracking=server"])
        assert cfg.cluster.address == "auto" and cfg.tracking.uri == "http://127.0.0.1:5000"
        assert cfg.study.storage is None and cfg.cluster.max_retries >= 1
        assert OmegaConf.to_container(cfg.cluster.runtime_env, resolve=True)["working_dir"] == "."
        monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.lab.example")
        monkeypatch.setenv("OPTUNA_STORAGE", "postgresql+psycopg://optuna:pw@db/optuna")
        monkeypatch.setenv("NEURO_OPT_WORKING_DIR", str(ROOT))
        assert cfg.cluster.address == "10.1.2.3:6379" and cfg.tracking.uri == "https://mlflow.lab.example"
        assert cfg.study.storage == "postgresql+psycopg://optuna:pw@db/optuna"
        assert cfg.cluster.runtime_env.working_dir == str(ROOT)
        # an explicit key still wins, as with cluster=local
        cfg = compose("config", overrides=["+exp=noise_sweep", "cluster=remote", "cluster.address=10.9.9.9:6379"])
        assert cfg.cluster.address == "10.9.9.9:6379" and cfg.tracking.uri == "sqlite:///mlflow.db"
        # the image's copy instead of shipping the checkout
        cfg = compose("config", overrides=["+exp=noise_sweep", "cluster=remote", "~cluster.runtime_env.working_dir",
                                           "~cluster.runtime_env.excludes"])
        assert not OmegaConf.to_container(cfg.cluster.runtime_env)


# --------------------------------------------------------------------------- the live cluster


_HANDED_OUT: set[int] = set()


def _free_ports(n: int) -> list[int]:
    """``n`` free loopback ports, none handed out before in this process.

    A port is free only while its probe socket is open; once closed the kernel may offer it again,
    so ports already given to one Ray component are excluded for the next (two components on one
    port make ``ray start`` fail).
    """
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
                _HANDED_OUT.add(port)
        return ports
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Processes of the session that ``sid``'s process was started in (with start_new_session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def _end_session(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM every process of a session this module started, then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = _session_pids(proc.pid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait_s
        while _session_pids(proc.pid) and time.time() < deadline:
            proc.poll()
            time.sleep(0.2)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return f"--- {path.name}:\n{path.read_text(errors='replace')[-n:]}"
    except OSError:
        return f"--- {path.name}: (none)"


_NODES = """
import json, sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
deadline = time.time() + timeout
while sum(n["Alive"] for n in ray.nodes()) != want and time.time() < deadline:
    time.sleep(0.5)
print(json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": n["Alive"],
                   "resources": n["Resources"]} for n in ray.nodes()]))
"""


class LoopbackCluster:
    """A Ray head and a second Ray node, plus an MLflow server, as processes this object owns."""

    def __init__(self, base: Path):
        self.base = base
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="nrc", dir="/tmp"))  # short: Ray's socket paths
        self.token = secrets.token_hex(32)
        self.procs: dict[str, subprocess.Popen] = {}
        self.head_port, self.mlflow_port = _free_ports(2)
        self.address = f"{HEAD_IP}:{self.head_port}"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.artifacts = base / "mlflow" / "artifacts"

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_")) and k not in ("OPTUNA_STORAGE", "NEURO_OPT_WORKING_DIR")}
        env.update(PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0", RAY_DISABLE_USAGE_STATS="1",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,  # never ~/.ray/auth_token
                   RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="4")  # a lost node in ~2 s
        env.update(extra)
        return env

    def _spawn(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(args, cwd=self.base, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _ray_start(self, name: str, head: bool) -> None:
        p = _free_ports(6)
        args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1",
                "--object-store-memory=100000000", f"--temp-dir={self.ray_tmp}", "--disable-usage-stats",
                f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
                f"--dashboard-agent-listen-port={p[2]}", f"--dashboard-agent-grpc-port={p[3]}",
                f"--runtime-env-agent-port={p[4]}", f"--metrics-export-port={p[5]}"]
        if head:
            q = _free_ports(2)
            args += ["--head", f"--node-ip-address={HEAD_IP}", f"--port={self.head_port}", "--include-dashboard=false",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={q[0]}"]
            if _has_ray_client():
                args.append(f"--ray-client-server-port={q[1]}")
        else:
            # a custom resource of its own, so this node is told apart in ray.nodes()
            args += [f"--address={self.address}", f"--node-ip-address={WORKER_IP}", '--resources={"second_node": 1}']
        self._spawn(name, args, self.env())

    def start(self) -> None:
        (self.base / "mlflow").mkdir()
        self._spawn("mlflow", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                               "--port", str(self.mlflow_port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{self.base / 'mlflow' / 'mlflow.db'}",
                               "--serve-artifacts", "--artifacts-destination", str(self.artifacts)],
                    self.env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        self._ray_start("head", head=True)
        self._wait(lambda: self._answers(HEAD_IP, self.head_port), 90, "the Ray head's GCS")
        self._ray_start("worker", head=False)
        self.nodes = self.node_table(want=2, timeout=120)
        assert sum(n["alive"] for n in self.nodes) == 2, f"the second node did not join: {self.nodes}\n{self.diagnostics()}"
        self._wait(self._mlflow_healthy, 180, "the MLflow server")

    def _answers(self, host: str, port: int) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{self.diagnostics()}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    def _mlflow_healthy(self) -> bool:
        if not self._answers("127.0.0.1", self.mlflow_port):
            return False
        try:
            with urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=3) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.time() + timeout_s
        while not ready():
            if time.time() > deadline:
                raise AssertionError(f"{what} not up after {timeout_s:.0f} s\n{self.diagnostics()}")
            time.sleep(0.5)

    def node_table(self, want: int, timeout: float = 60) -> list[dict]:
        proc = subprocess.run([sys.executable, "-c", _NODES, self.address, str(want), str(timeout)], cwd=self.base,
                              env=self.env(), capture_output=True, text=True, timeout=timeout + 90)
        assert proc.returncode == 0, f"ray.nodes() failed:\n{proc.stderr[-3000:]}\n{self.diagnostics()}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def session_of(self, name: str) -> int:
        return self.procs[name].pid

    def running_cells(self, name: str) -> set[int]:
        """Pids of the node's workers that are executing a cell right now."""
        return {pid for pid in _session_pids(self.session_of(name)) if _title(pid).startswith("ray::_execute")}

    def kill_node(self, name: str) -> None:
        """What a lost machine looks like: SIGKILL every process of that node, raylet and workers."""
        sid = self.session_of(name)
        for _ in range(20):
            pids = _session_pids(sid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        self.procs[name].wait(timeout=10)

    def diagnostics(self) -> str:
        parts = [_tail(p) for p in sorted(self.logs.glob("*.log"))]
        session = self.ray_tmp / "session_latest" / "logs"
        parts += [_tail(p, 1500) for p in sorted(session.glob("raylet*.out"))[:2] + sorted(session.glob("gcs_server.out"))]
        return "\n".join(parts)

    def stop(self) -> None:
        for name in ("worker", "head", "mlflow"):
            if name in self.procs:
                _end_session(self.procs[name])
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _has_ray_client() -> bool:
    import importlib.util
    return importlib.util.find_spec("grpc") is not None


class CellWatcher(threading.Thread):
    """Samples, every 0.1 s, which node's workers are executing a cell."""

    def __init__(self, cluster: LoopbackCluster, nodes=("head", "worker")):
        super().__init__(daemon=True)
        self.cluster, self.nodes = cluster, [n for n in nodes if n in cluster.procs]
        self.seen: dict[str, set[int]] = {n: set() for n in self.nodes}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for n in self.nodes:
                if self.cluster.procs[n].poll() is None:
                    self.seen[n] |= self.cluster.running_cells(n)
            self.halt.wait(0.1)

    def stop(self) -> dict[str, set[int]]:
        self.halt.set()
        self.join(timeout=5)
        return self.seen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _launch(cluster: LoopbackCluster, cwd: Path, overrides: list[str], **env: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    e = cluster.env(NEURO_OPT_WORKING_DIR=str(ROOT), **env)  # ship this checkout (cluster=remote)
    with open(cwd / "launch.out", "w") as out, open(cwd / "launch.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "sweeps.launch", *overrides], cwd=cwd, env=e,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)


def _finish(cluster: LoopbackCluster, proc: subprocess.Popen, cwd: Path, timeout_s: float = 300) -> dict:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out, err = (cwd / "launch.out").read_text(), (cwd / "launch.err").read_text()
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{out[-3000:]}\n{err[-5000:]}\n{cluster.diagnostics()}"
    return json.loads(Path(out.strip().splitlines()[-1]).read_text())


def _results(run_dir: Path) -> pa.Table:
    files = sorted((run_dir / "results").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by([("cell", "ascending"), ("rep", "ascending"), ("query", "ascending")])


def test_sweep_runs_cells_on_both_nodes_and_records_everything_on_the_mlflow_server(cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    nodes = {n["ip"]: n for n in cluster.nodes}  # two raylets, each its own node
    assert set(nodes) == {HEAD_IP, WORKER_IP} and nodes[WORKER_IP]["resources"].get("second_node") == 1
    watcher = CellWatcher(cluster)
    watcher.start()
    # exactly as on a lab's cluster: the address and the server come from the environment
    proc = _launch(cluster, tmp_path, [*TINY, "cluster=remote", "tracking=server"],
                   RAY_ADDRESS=cluster.address, MLFLOW_TRACKING_URI=cluster.mlflow_uri)
    summary = _finish(cluster, proc, tmp_path)
    seen = watcher.stop()
    assert seen["head"] and seen["worker"], f"cells ran on only one node: {seen}"

    run_dir = Path(summary["run_dir"])
    assert summary["n_cells"] == 12 and summary["failed_cells"] == 0
    assert _results(run_dir).num_rows == 12 * 2 * 8
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()  # nothing kept locally

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    exp = client.get_experiment_by_name("noise_sweep")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # artifacts go through the server
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["cluster.address"] == cluster.address
    assert parent.data.params["cluster.runtime_env.working_dir"] == str(ROOT)
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6  # 3 algorithms x 2 noise levels
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"exploration_final", "exploitation_final"} <= set(child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, "exploration_mean")) == 8
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results", "figures", "summary.json", "config"} <= arts
    assert {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "results")} == \
        {p.name for p in (run_dir / "results").glob("*.parquet")}
    assert {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "figures")} == \
        {p.name for p in (run_dir / "figures").iterdir()}
    # the bytes are in the server's artifact store, and come back unchanged
    stored = list(cluster.artifacts.rglob(f"{parent.info.run_id}/artifacts/summary.json"))
    assert len(stored) == 1 and stored[0].read_bytes() == (run_dir / "summary.json").read_bytes()
    assert len(list(stored[0].parent.glob("results/*.parquet"))) == 12
    back = Path(client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path / "back")))
    assert back.read_bytes() == (run_dir / "summary.json").read_bytes()


def test_losing_a_worker_node_mid_sweep_reruns_its_cells_and_changes_no_result(cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    overrides = [*LARGER, "cluster=remote", f"cluster.address={cluster.address}", f"tracking.uri={cluster.mlflow_uri}"]
    disturbed = tmp_path / "disturbed"
    watcher = CellWatcher(cluster)
    watcher.start()
    proc = _launch(cluster, disturbed, overrides)
    in_flight, done_at_kill = set(), None
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        done = len(list(disturbed.glob("runs/*/*/results/*.parquet")))
        running = cluster.running_cells("worker")
        if done >= 3 and running:  # some cells recorded, and the worker node is inside one
            in_flight, done_at_kill = running, done
            cluster.kill_node("worker")
            break
        time.sleep(0.1)
    assert in_flight, (f"the worker node never ran a cell after the first one was recorded; nothing to lose "
                       f"(launch rc={proc.poll()}, cells seen {watcher.seen})")
    summary = _finish(cluster, proc, disturbed)
    seen = watcher.stop()
    print(f"killed the worker node with {done_at_kill} of 16 cells recorded and cell(s) in flight in pids "
          f"{sorted(in_flight)}; cells ran in worker processes {({n: sorted(p) for n, p in seen.items()})}")

    nodes = {n["ip"]: n for n in cluster.node_table(want=1)}
    assert nodes[WORKER_IP]["alive"] is False and nodes[HEAD_IP]["alive"] is True
    run_dir = Path(summary["run_dir"])
    assert summary["n_cells"] == 16 and summary["failed_cells"] == 0 and not (run_dir / "failures.json").exists()
    files = sorted((run_dir / "results").iterdir())
    assert len(files) == 16 and all(f.suffix == ".parquet" for f in files)  # each cell once, no partial file
    assert done_at_kill < 16  # the kill came in the middle of the sweep

    # an undisturbed run of the same sweep (on the head alone) gives the same table, row for row
    undisturbed = tmp_path / "undisturbed"
    reference = _finish(cluster, _launch(cluster, undisturbed, overrides), undisturbed)
    assert _results(run_dir).equals(_results(Path(reference["run_dir"])))

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    exp_id = parent.info.experiment_id
    children = [r for r in client.search_runs([exp_id]) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # one child run per noise level, none twice
    assert sorted(float(c.data.params["noise"]) for c in children) == [0.0, 0.25, 0.5, 0.75]
    assert len(client.list_artifacts(parent.info.run_id, "results")) == 16


def test_every_documented_ray_start_turns_token_auth_on():
    """A command a lab copies to start a Ray node (the rig PC included) never leaves auth off."""
    docs = sorted(ROOT.glob("docs/**/*.md"))
    places = [ROOT / "README.md", INFRA / "README.md", *docs, *ROOT.glob("conf/**/*.yaml"),
              *ROOT.glob("hardware/*.py"), *ROOT.glob("sweeps/*.py")]
    found = in_docs = 0
    for path in places:
        for line in path.read_text().splitlines():
            for m in re.finditer(r"ray start --", line):
                found += 1
                in_docs += path in docs
                assert line[:m.start()].rstrip().endswith("RAY_AUTH_MODE=token"), f"{path}: {line.strip()}"
    assert found >= 5
    assert in_docs >= 3  # the lab-machine and rig commands of the cluster and online pages
