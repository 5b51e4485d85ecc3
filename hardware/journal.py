"""A crash-proof, append-only session journal (one JSON object per line).

Every record is written with a single ``write`` on an ``O_APPEND`` descriptor
and ``fsync``-ed before :meth:`Journal.append` returns, so a record the runner
has moved past is on disk. Each record carries ``seq`` (0, 1, 2, ...), ``kind``
and ``t`` (unix time). The first record is the session header.

A process killed in the middle of a write can leave a torn last line (no
trailing newline). :meth:`Journal.open` moves such a tail to ``<journal>.torn``
and truncates it away, so the journal stays a sequence of whole records; any
other unreadable line, or a gap in ``seq``, is an error (nothing is dropped
silently). An exclusive ``flock`` keeps two runners off one journal.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


class JournalError(RuntimeError):
    """The journal is unreadable, inconsistent, or in use."""


def to_jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays converted, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"journal: cannot record a {type(x).__name__}: {x!r}")


class Journal:
    """Append-only JSON-lines file; use :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, fd: int, records: list[dict]):
        self.path, self._fd, self.records = path, fd, records

    @classmethod
    def create(cls, path: str | Path, header: dict) -> "Journal":
        """A new journal whose first record is ``header`` (kind ``header``); refuses to overwrite."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise JournalError(f"journal {path} already exists; resume it instead of starting over") from None
        try:
            cls._lock(fd, path)
        except JournalError:
            os.close(fd)
            raise
        _fsync_dir(path.parent)
        j = cls(path, fd, [])
        j.append("header", **header)
        return j

    @classmethod
    def open(cls, path: str | Path) -> "Journal":
        """Open an existing journal for appending, after checking every record."""
        path = Path(path)
        if not path.exists():
            raise JournalError(f"no journal at {path}")
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            cls._lock(fd, path)
            data = _read_all(fd)
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                with open(str(path) + ".torn", "ab") as fh:
                    fh.write(data[cut:] + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.ftruncate(fd, cut)
                os.fsync(fd)
                data = data[:cut]
            records = cls.parse(data, path)
        except BaseException:
            os.close(fd)
            raise
        if not records or records[0].get("kind") != "header":
            os.close(fd)
            raise JournalError(f"journal {path} does not start with a header record")
        return cls(path, fd, records)

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        """Every whole record of a journal, read-only (a torn last line is ignored)."""
        data = Path(path).read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
        return Journal.parse(data, Path(path))

    @staticmethod
    def parse(data: bytes, path: Path) -> list[dict]:
        records = []
        for i, line in enumerate(data.splitlines(), start=1):
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise JournalError(
                    f"journal {path} line {i} is corrupt ({exc}); it was written whole, so the file "
                    f"was damaged after the fact: inspect it, nothing was dropped"
                ) from None
            if not isinstance(rec, dict) or rec.get("seq") != len(records):
                raise JournalError(
                    f"journal {path} line {i}: expected seq {len(records)}, got "
                    f"{rec.get('seq') if isinstance(rec, dict) else rec!r}"
                )
            records.append(rec)
        return records

    @staticmethod
    def _lock(fd: int, path: Path) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise JournalError(f"journal {path} is in use by another process") from None

    @property
    def header(self) -> dict:
        return self.records[0]

    def of_kind(self, *kinds: str) -> list[dict]:
        return [r for r in self.records if r["kind"] in kinds]

    def append(self, kind: str, **fields) -> dict:
        """Write one record and fsync it; returns the record as written."""
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        rec = to_jsonable({"seq": len(self.records), "kind": kind, "t": time.time(), **fields})
        line = (json.dumps(rec, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
        n = os.write(self._fd, line)
        if n != len(line):
            raise JournalError(f"journal {self.path}: short write ({n} of {len(line)} bytes)")
        os.fsync(self._fd)
        self.records.append(rec)
        return rec

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["Journal", "JournalError", "to_jsonable"]
