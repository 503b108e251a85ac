"""Choosing the backend that runs a validated call.

The NumPy golden implementation (``incq._golden``) is the backend for NumPy arrays. A
``backend=`` keyword, or the ``INCQ_BACKEND`` environment variable, names one explicitly;
an unknown name is refused with :class:`incq.IncqError`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ._validate import fail

#: backend name -> module implementing it
BACKENDS = {"numpy": "incq._golden"}


def backend_for(fn: str, *arrays, backend: str | None = None) -> ModuleType:
    """The backend module for ``arrays`` (``None`` entries are ignored)."""
    name = backend
    source = "backend"
    if name is None:
        name = os.environ.get("INCQ_BACKEND") or None
        source = "INCQ_BACKEND"
    if name is None:
        name = "numpy"
    if name not in BACKENDS:
        raise fail(fn, source, f"must name one of {', '.join(repr(b) for b in BACKENDS)}", repr(name))
    return importlib.import_module(BACKENDS[name])
