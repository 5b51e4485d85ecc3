"""Restricted unpickling for NeuroMOSAICS Dataset 2 files.

Dataset 2 is published as Python pickles. A plain ``pickle.load`` imports and
calls any function a file names, so a crafted file runs arbitrary code. :func:`load`
admits only what numpy arrays (numeric, string, and object arrays holding nested
arrays or lists, written by numpy 1.x or 2.x with any pickle protocol) and plain
Python containers and scalars need. It refuses any other global with
:class:`RefusedGlobalError` before importing or calling it.
"""

from __future__ import annotations

import pickle

# Hand-written because pickle offers no allow-list of its own: the only hook is
# Unpickler.find_class, which every global a pickle names (GLOBAL, STACK_GLOBAL, INST, EXT*) goes through.
ALLOWED = frozenset(
    {
        # numpy arrays (_reconstruct, protocols 0-4; _frombuffer, protocol 5), numpy scalars and dtypes;
        # numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.* and still resolves numpy.core.*
        *(
            (f"{core}.{module}", name)
            for core in ("numpy.core", "numpy._core")
            for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
        ),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # raw bytes stored as latin-1 text (protocols < 3)
        # Python types without an opcode of their own; protocols < 3 spell the module "__builtin__"
        *(
            (module, name)
            for module in ("builtins", "__builtin__")
            for name in ("set", "frozenset", "complex", "bytes", "bytearray", "slice")
        ),
        ("collections", "OrderedDict"),
    }
)


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`ALLOWED`; nothing was imported or called."""

    def __init__(self, where: str, module: str, name: str):
        self.where, self.module, self.name = where, module, name
        super().__init__(
            f"{where}: refused: the pickle asks for {module}.{name}, which is not a numpy array or "
            f"a plain Python container or scalar (Dataset 2 files hold only those; a crafted file "
            f"could run code)"
        )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED`."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise RefusedGlobalError(self.where, module, name)
        return super().find_class(module, name)


def load(path) -> object:
    """The object stored in the pickle at ``path``, read with :class:`RestrictedUnpickler`.

    Raises:
        RefusedGlobalError: the file names a global outside :data:`ALLOWED`.
        OSError, pickle.UnpicklingError, EOFError, ...: unreadable, truncated or
            corrupt files fail as they do with ``pickle.load``.
    """
    with open(path, "rb") as fh:
        return RestrictedUnpickler(fh, str(path)).load()
