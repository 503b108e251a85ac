"""Choosing the backend that runs a validated call.

The backend follows the inputs' array type: NumPy arrays run the golden implementation
(``incq._golden``), torch tensors run the torch backend (``incq._torch``) on the device they
live on. Deciding never imports a framework: a torch tensor can only exist once the caller has
imported torch, so the check looks at ``sys.modules`` (as einops does).

A ``backend=`` keyword, or else the ``INCQ_BACKEND`` environment variable, forces a backend:
``"numpy"`` runs the golden on torch tensors (copied to the host and back, results on the
tensors' device) and ``"torch"`` runs the torch backend on NumPy arrays (on the CPU, results
returned as NumPy arrays). Mixed NumPy / torch inputs, tensors on different devices, an unknown
backend and one whose framework is not installed are refused with :class:`incq.IncqError`.
"""

from __future__ import annotations

import os
from typing import Any

from ._validate import describe, fail, is_torch

#: the backends a caller can name
BACKENDS = ("numpy", "torch")


def native(fn: str, arrays: dict[str, Any]) -> tuple[str, Any]:
    """The inputs' own namespace ("numpy" or "torch") and, for torch, their common device."""
    kinds = {name: ("torch" if is_torch(a) else "numpy") for name, a in arrays.items() if a is not None}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{name}: {describe(arrays[name])}" for name in kinds)
        raise fail(fn, "arrays", "must be all NumPy arrays or all torch tensors", listed)
    if "torch" not in kinds.values():
        return "numpy", None
    devices = {name: arrays[name].device for name in kinds}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise fail(fn, "arrays", "must all live on one device", listed)
    return "torch", next(iter(devices.values()))


def _load(fn: str, name: str, source: str):
    if name == "numpy":
        from . import _golden

        return _golden
    try:
        from . import _torch
    except ImportError:
        raise fail(fn, source, "names the torch backend, but torch is not installed", repr(name)) from None
    return _torch


def backend_for(fn: str, arrays: dict[str, Any], backend: str | None = None):
    """The backend (a module, or an adapter with the same functions) for ``arrays``.

    ``arrays`` maps argument names to the call's arrays; ``None`` entries are ignored.
    """
    native_name, _ = native(fn, arrays)
    name, source = backend, "backend"
    if name is None:
        name, source = os.environ.get("INCQ_BACKEND") or None, "INCQ_BACKEND"
    if name is None:
        name = native_name
    if name not in BACKENDS:
        raise fail(fn, source, f"must name one of {', '.join(repr(b) for b in BACKENDS)}", repr(name))
    module = _load(fn, name, source)
    if name == native_name:
        return module
    from . import _bridge

    return _bridge.golden_on_torch if name == "numpy" else _bridge.torch_on_numpy
