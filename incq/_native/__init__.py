"""incq's compiled CPU kernels (``incq._native._ext``, built by ``pip install`` when a C
compiler is present) and the choice of their instruction-set variant.

The extension holds every kernel in up to four variants: ``"avx512bf16"`` (AVX-512 with the
BF16 dot-product instructions), ``"avx512"``, ``"avx2"`` and ``"portable"`` (plain C). The
fastest one the CPU runs is chosen at import; the ``INCQ_ISA`` environment variable forces
one (``INCQ_ISA=avx2``), or ``INCQ_ISA=off`` turns the compiled kernels off so that torch
tensors on the CPU take the torch backend. When the extension is missing (no compiler at
install time, or a failed build) incq says so once, with :class:`incq.IncqWarning`, and runs
the torch backend.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

from incq._errors import IncqError, IncqWarning

#: the environment variable that forces a variant (or ``off``)
ENV = "INCQ_ISA"
#: the variants, slowest first (the extension's own order)
VARIANTS = ("portable", "avx2", "avx512", "avx512bf16")
OFF = "off"

if importlib.util.find_spec("incq._native._ext") is None:  # no compiler at install time, or a failed build
    _ext = None
    _MISSING = "the extension incq._native._ext was not built"
else:
    try:
        from incq._native import _ext
    except ImportError as exc:  # built, but it does not load here
        _ext = None
        _MISSING = f"incq._native._ext does not load: {exc}"
    else:
        _MISSING = ""

_STATE = {"resolved": None, "warned": False}


def built() -> bool:
    """Whether the compiled extension was built and imports."""
    return _ext is not None


def missing_reason() -> str:
    """Why the extension is not available ("" when it is)."""
    return _MISSING


def supported() -> tuple[str, ...]:
    """The variants this CPU runs, slowest first (empty without the extension)."""
    return tuple(_ext.supported()) if _ext is not None else ()


def _resolve() -> str:
    wanted = (os.environ.get(ENV) or "").strip().lower()
    if wanted == OFF:
        return OFF
    if _ext is None:
        if not _STATE["warned"]:
            _STATE["warned"] = True
            warnings.warn(
                f"incq's compiled CPU kernels are not available ({_MISSING}); torch tensors on the CPU run "
                "the slower torch backend (reinstall with a C compiler present: pip install -e .)",
                IncqWarning,
                stacklevel=4,
            )
        return OFF
    runs = supported()
    if not wanted or wanted == "auto":
        return runs[-1]
    if wanted not in VARIANTS:
        raise IncqError(f"incq: {ENV} must be one of auto, off, {', '.join(VARIANTS)}; got {wanted!r}")
    if wanted not in runs:
        raise IncqError(f"incq: {ENV} = {wanted!r} names a variant this CPU cannot run (it runs {', '.join(runs)})")
    return wanted


def active() -> str:
    """The variant the kernels run now: one of :data:`VARIANTS`, or ``"off"``.

    Decided on first use from the CPU and ``INCQ_ISA`` (an unknown or unsupported name raises
    :class:`incq.IncqError`); :func:`use` changes it.
    """
    if _STATE["resolved"] is None:
        chosen = _resolve()
        if chosen != OFF:
            _ext.set_isa(chosen)
        _STATE["resolved"] = chosen
    return _STATE["resolved"]


def usable() -> bool:
    """Whether calls on CPU tensors go to the compiled kernels."""
    return active() != OFF


def use(variant: str | None) -> str:
    """Run ``variant`` from now on (``None``: decide again from the CPU and ``INCQ_ISA``);
    returns the variant in force. For tests and benchmarks that compare the variants."""
    if variant is None:
        _STATE["resolved"] = None
        return active()
    if variant == OFF:
        _STATE["resolved"] = OFF
        return OFF
    if variant not in supported():
        raise IncqError(f"incq: variant {variant!r} is not one this machine runs ({', '.join(supported()) or 'none'})")
    _ext.set_isa(variant)
    _STATE["resolved"] = variant
    return variant
