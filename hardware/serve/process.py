"""``python -m hardware.serve`` as a child process on a free loopback port (:class:`ServerProcess`).

What the tests and the load benchmark (``+exp=serve_load``) start: the real server, as a lab
would run it, in its own process.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from hardware.rig import PROJECT_ROOT


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """The session service over ``root`` on a free loopback port; also a context manager.

    Args:
        root: the sessions folder (``--root``); the token file is ``root/token``.
        rig: the rig config (``--rig``).
        wait: wait until it answers (see :meth:`wait`).
        wait_s: how long to wait before giving up.

    Attributes: ``url``, ``port``, ``token`` (once it answered), ``proc``, ``log`` (the path of
    its output, ``<root>-<port>.log`` beside ``root``).
    """

    def __init__(self, root: str | Path, rig: str | Path = "conf/rig/external.yaml", wait: bool = True, wait_s=90.0):
        self.root, self.port, self.wait_s = Path(root), free_port(), wait_s
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.root.parent / f"{self.root.name}-{self.port}.log"
        self.token = ""
        cmd = [sys.executable, "-m", "hardware.serve", "--port", str(self.port), "--root", str(self.root)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--rig", str(rig)], cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait()

    @property
    def auth(self) -> dict:
        """The ``Authorization`` header."""
        return {"Authorization": f"Bearer {self.token}"}

    def wait(self) -> None:
        """Return once it answers an authenticated request; RuntimeError (with its output) if it exits or times out."""
        deadline = time.monotonic() + self.wait_s
        token_file = self.root / "token"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the session server exited with {self.proc.returncode}: {self.log.read_text()}")
            if token_file.exists() and token_file.read_text().strip():
                self.token = token_file.read_text().strip()
                try:
                    if requests.get(self.url + "/api/sessions", headers=self.auth, timeout=5).status_code == 200:
                        return
                except requests.ConnectionError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the session server did not answer in {self.wait_s:g} s: {self.log.read_text()}")

    def client(self, timeout: float = 60.0):
        """A :class:`~hardware.serve.client.SessionClient` of this server."""
        from hardware.serve.client import SessionClient

        return SessionClient(self.url, self.token, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGKILL: a crash) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["ServerProcess", "free_port"]
