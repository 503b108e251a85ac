"""Choosing the backend that runs a validated call.

The backend follows the inputs' array type: NumPy arrays run the golden implementation
(``incq._core.golden``), torch tensors run the torch backend (``incq._core.torch_backend``) on the device they
live on. Deciding never imports a framework: a torch tensor can only exist once the caller has
imported torch, so the check looks at ``sys.modules`` (as einops does).

A ``backend=`` keyword, or else the ``INCQ_BACKEND`` environment variable, forces a backend:
``"native"`` the compiled kernels (CPU tensors), ``"numpy"`` runs the golden on torch tensors (copied to the host and back, results on the
tensors' device) and ``"torch"`` runs the torch backend on NumPy arrays (on the CPU, results
returned as NumPy arrays). Mixed NumPy / torch inputs, tensors on different devices, an unknown
backend and one whose framework is not installed are refused with :class:`incq.IncqError`.

The choice is made from tables: :data:`BACKENDS` (every backend, the array type it runs
natively, how to load it, which devices it takes), :data:`PREFERENCE` (per array type, the
backends in order of preference) and :data:`BRIDGES` (adapters for a backend forced onto the
other array type). A second implementation for one array type (a compiled CPU kernel, say) is
one more entry in the first two.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from incq._core.validate import compiling, describe, fail, is_torch

def _golden():
    from incq._core import golden as _golden

    return _golden


def _torch(fn: str, source: str, name: str):
    try:
        from incq._core import torch_backend as _torch
    except ImportError:
        raise fail(fn, source, "names the torch backend, but torch is not installed", repr(name)) from None
    return _torch


_KERNELS: list = []  # [incq._native], once imported


def _kernels():
    """incq._native (the compiled kernels' state)."""
    if not _KERNELS:
        from incq import _native

        _KERNELS.append(_native)
    return _KERNELS[0]


def _native(fn: str, source: str, name: str):
    _torch(fn, source, name)
    kernels = _kernels()
    if not kernels.usable():
        why = kernels.missing_reason() or f"{kernels.ENV} is {kernels.OFF!r}"
        raise fail(fn, source, f"names the compiled CPU kernels, which are not available ({why})", repr(name))
    from incq._native import backend as _backend

    return _backend


_CPU: list = []  # [torch.device("cpu")], once torch is imported (comparing devices is faster than reading .type)


def _native_runs_on(device) -> bool:
    if device is None:
        return False
    if not _CPU:
        _CPU.append(device.__class__("cpu"))
    return device == _CPU[0] and _kernels().usable()


# os.environ.get costs a caught KeyError (about a microsecond) when the variable is unset;
# its mapping of encoded names answers the same question without one. Both see every change
# made through os.environ.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("INCQ_BACKEND") if hasattr(os.environ, "encodekey") else None


def _env_backend() -> str | None:
    if _ENV_DATA is None or _ENV_KEY is None:
        return os.environ.get("INCQ_BACKEND") or None
    raw = _ENV_DATA.get(_ENV_KEY)
    return None if raw is None else (os.environ.decodevalue(raw) or None)


class Backend(NamedTuple):
    namespace: str  #: the array type it runs natively: "numpy" or "torch"
    load: Any  #: ``load(fn, source, name)`` -> the module (or adapter) with the backend's functions
    runs_on: Any  #: ``runs_on(device)`` -> whether it takes this device's arrays natively


#: every backend a caller can name, by name
BACKENDS = {
    "numpy": Backend("numpy", lambda fn, source, name: _golden(), lambda device: True),
    "torch": Backend("torch", _torch, lambda device: True),
    "native": Backend("torch", _native, _native_runs_on),
}
#: array namespace -> backends that run its arrays natively, by preference; the first whose
#: ``runs_on`` accepts the arrays' device is chosen
PREFERENCE = {"numpy": ("numpy",), "torch": ("native", "torch")}
_NATIVE = BACKENDS["native"]

#: operation -> a lane of the compiled kernels for its most common case, registered by
#: ``incq._native`` when it is first loaded (see :func:`native_default`)
LANES: dict[str, Any] = {}


def native_default() -> bool:
    """Whether a call on CPU tensors that names no backend runs the compiled kernels, as
    :func:`backend_for` would decide: ``INCQ_BACKEND`` unset, the compiled kernels first in the
    tables and in use. False until a variant is decided (the first call through
    :func:`backend_for` decides it).

    A lane (:data:`LANES`) asks this before it takes a call: it runs one operation's common case
    with its checks written inline (its whole cost is a few microseconds of Python around a
    kernel of a few more), and hands every other case to the public function's general path."""
    if _ENV_DATA is None or _ENV_KEY is None:
        if _env_backend() is not None:
            return False
    elif _ENV_DATA.get(_ENV_KEY):  # (inline: a lane's whole cost is a few microseconds)
        return False
    return (PREFERENCE["torch"][0] == "native" and BACKENDS["native"] is _NATIVE
            and (_KERNELS[0] if _KERNELS else _kernels())._STATE["resolved"] not in (None, "off"))


def _bridge():
    from incq._core import bridge as _bridge

    return _bridge


#: (backend namespace, array namespace) -> the adapter that runs one on the other's arrays
BRIDGES = {("numpy", "torch"): lambda: _bridge().golden_on_torch, ("torch", "numpy"): lambda: _bridge().torch_on_numpy}


def native(fn: str, arrays: dict[str, Any]) -> tuple[str, Any]:
    """The inputs' own namespace ("numpy" or "torch") and, for torch, their common device."""
    tensors = arrays_numpy = 0
    device = None
    same = True
    for a in arrays.values():
        if a is None:
            continue
        if is_torch(a):
            tensors += 1
            here = a.device
            if device is None:
                device = here
            elif here != device:
                same = False
        else:
            arrays_numpy += 1
    if tensors and arrays_numpy:
        kinds = {name: ("torch" if is_torch(a) else "numpy") for name, a in arrays.items() if a is not None}
        listed = ", ".join(f"{name}: {describe(arrays[name])}" for name in kinds)
        raise fail(fn, "arrays", "must be all NumPy arrays or all torch tensors", listed)
    if not tensors:
        return "numpy", None
    if not same:
        listed = ", ".join(f"{name} on {a.device}" for name, a in arrays.items() if a is not None)
        raise fail(fn, "arrays", "must all live on one device", listed)
    return "torch", device


#: (namespace, device) -> the preferred backend as last chosen: (the compiled kernels' variant,
#: the preference order and the backend's table entry then, its name, its module). The walk
#: through the tables is done again when any of those changed (incq._native.use, a new table).
_PREFERRED: dict[tuple, tuple] = {}


def _variant(namespace: str) -> str | None:
    return _kernels()._STATE["resolved"] if namespace == "torch" else None


def backend_for(fn: str, arrays: dict[str, Any], backend: str | None = None):
    """The backend (a module, or an adapter with the same functions) for ``arrays``.

    ``arrays`` maps argument names to the call's arrays; ``None`` entries are ignored.
    """
    namespace, device = native(fn, arrays)
    name, source = backend, "backend"
    if name is None:
        name, source = _env_backend(), "INCQ_BACKEND"
    if name is None:
        order = PREFERENCE[namespace]
        chosen = _PREFERRED.get((namespace, device))
        if chosen is not None and chosen[0] == _variant(namespace) and chosen[1] is order and chosen[2] is BACKENDS[chosen[3]]:
            return chosen[4]
        for name in order:
            if BACKENDS[name].runs_on(device):
                break
        module = BACKENDS[name].load(fn, source, name)
        if not compiling():  # (a trace must not see module state change)
            _PREFERRED[(namespace, device)] = (_variant(namespace), order, BACKENDS[name], name, module)
        return module
    if name not in BACKENDS:
        raise fail(fn, source, f"must name one of {', '.join(repr(b) for b in BACKENDS)}", repr(name))
    chosen = BACKENDS[name]
    module = chosen.load(fn, source, name)
    if chosen.namespace == namespace:
        return module
    return BRIDGES[(chosen.namespace, namespace)]()
