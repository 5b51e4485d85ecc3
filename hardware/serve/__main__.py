"""``python -m hardware.serve``: run the session service (see :mod:`hardware.serve`)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hardware.serve", description="neuro-opt session service: online sessions over HTTP."
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--root", default="runs/serve", help="folder of the session folders")
    ap.add_argument("--rig", default="conf/rig/external.yaml", help="the rig config (kind external)")
    ap.add_argument("--token-file", default=None, help="the token file (default <root>/token)")
    args = ap.parse_args(argv)

    import yaml

    from hardware.rig import resolve_path
    from hardware.serve.auth import TokenFileError, load_or_create_token

    root = Path(args.root)
    token_file = Path(args.token_file) if args.token_file else root / "token"
    try:
        with open(resolve_path(args.rig, "--rig")) as fh:
            rig_cfg = yaml.safe_load(fh)
        if not isinstance(rig_cfg, dict) or "limits" not in rig_cfg:
            raise ValueError(f"--rig {args.rig}: expected a rig config with 'limits' (conf/rig/external.yaml)")
        token = load_or_create_token(token_file)
    except (OSError, ValueError, TokenFileError, yaml.YAMLError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2

    import uvicorn

    from hardware.serve.app import create_app

    try:
        app = create_app(root, rig_cfg, token)
    except ValueError as exc:
        print(f"error: --rig {args.rig}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    import torch

    import neuro_opt.algorithms  # noqa: F401 - torch and the optimizers, loaded before the first request

    # one intra-op thread per GP step (each request also runs under intra_op_threads(1)): concurrent
    # sessions share the cores instead of each spinning a pool over all of them
    torch.set_num_threads(1)

    shown = f"[{args.host}]" if ":" in args.host else args.host
    if not _loopback(args.host):
        print(
            f"warning: binding {args.host}, not loopback: anyone who can reach this port and has the token "
            f"can drive stimulation; the traffic is plain HTTP (put TLS in front of it)",
            flush=True,
        )
        if args.host in ("0.0.0.0", "::"):
            shown = "127.0.0.1"
    print(f"neuro-opt session service: http://{shown}:{args.port}/?token={token} (token in {token_file})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
