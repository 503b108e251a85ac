"""incq: weight-only quantized checkpoint layouts (GPTQ, AWQ, AutoRound), specified to the bit.

Stateless functions on plain arrays. The NumPy implementation is the golden reference; see
``specs/`` for the written formats.
"""

from ._core.api import (
    awq_to_gptq,
    awq_zeros_to_gptq,
    dequantize,
    exact_gguf_type,
    from_gguf_blocks,
    gptq_to_awq,
    gptq_zeros_to_awq,
    layout_matmul,
    make_cpu_layout,
    make_xpu_layout,
    pack,
    pack_zeros,
    quantize,
    repack,
    repack_zeros,
    unpack,
    to_gguf_blocks,
    unpack_zeros,
    w4a16_matmul,
)
from ._tool.config import config_kwargs
from ._errors import IncqError, IncqWarning
from ._core.formats import FORMATS
from ._core.bits import AWQ_ORDER, AWQ_REVERSE_ORDER
from ._kernels.types import CpuLayout, TorchLayout, XpuLayout

__version__ = "0.1.0"

__all__ = [
    "AWQ_ORDER",
    "AWQ_REVERSE_ORDER",
    "CpuLayout",
    "FORMATS",
    "IncqError",
    "IncqWarning",
    "TorchLayout",
    "XpuLayout",
    "awq_to_gptq",
    "awq_zeros_to_gptq",
    "config_kwargs",
    "dequantize",
    "exact_gguf_type",
    "from_gguf_blocks",
    "gptq_to_awq",
    "gptq_zeros_to_awq",
    "layout_matmul",
    "make_cpu_layout",
    "make_xpu_layout",
    "pack",
    "pack_zeros",
    "quantize",
    "repack",
    "repack_zeros",
    "to_gguf_blocks",
    "unpack",
    "unpack_zeros",
    "w4a16_matmul",
]
