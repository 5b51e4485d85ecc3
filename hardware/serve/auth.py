"""The service's one secret: a token file, and the check of every request against it.

The token is created on the first start (``secrets.token_urlsafe(32)``, file mode 0600) and read
on every later start; a token file that the group or others can read is refused (a one-line
:class:`TokenFileError`), as ssh refuses a readable private key. A request proves it knows the
token with ``Authorization: Bearer TOKEN`` or the ``neuro_opt_token`` cookie, which any page
sets when visited once with ``?token=TOKEN`` (then redirects to the address without it).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

COOKIE = "neuro_opt_token"


class TokenFileError(RuntimeError):
    """The token file cannot be used (readable by others, empty, unreadable)."""


def load_or_create_token(path: str | Path) -> str:
    """The token in ``path``; a new one (mode 0600) if the file does not exist."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # whatever the umask
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return token


def _read_token(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TokenFileError(
            f"token file {path} has mode {mode:04o}: the group or others can read it; "
            f"expected 0600 (chmod 600 {path}, or delete it to make a new token)"
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise TokenFileError(f"token file {path} holds no token (expected one line of >= 16 characters)")
    return token


def token_matches(token: str, given: str | None) -> bool:
    """Constant-time comparison of ``given`` with the service's token."""
    return bool(given) and hmac.compare_digest(token.encode(), str(given).encode())


def request_token(headers: dict[str, str], cookies: dict[str, str]) -> str | None:
    """The token a request presents: its ``Authorization: Bearer`` header, else its cookie."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return cookies.get(COOKIE)


__all__ = ["COOKIE", "TokenFileError", "load_or_create_token", "request_token", "token_matches"]
