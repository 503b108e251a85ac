"""The packed formats, each described once, as data (``specs/formats.md``).

A format says how a layer's logical tensors (codes ``q[K, N]``, zero points ``z[G, N]``,
scales ``s[G, N]``, group index ``g_idx[K]``) are stored: which axis the codes are packed along
and in which bit order, how zero points are packed and which conventions they may use, and
which tensor names a checkpoint gives them. Every public function, the validators, both
backends, the kernels' layouts and the checkpoint tool read their rules from here; the bit
orders themselves ("sequential", "awq") are implemented by the backends' ``pack`` / ``unpack``.

Adding a format means adding an entry here (with its spec page, golden vectors and config
reader); ``tests/test_formats.py`` checks that no other module writes a format's or a bit
order's name: they ask this table (``GPTQ.name``, ``AWQ.quant_method``, :data:`INTERLEAVED`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

#: the bit orders of codes in a word (``pack`` / ``unpack``'s ``order=``; specs/gptq.md, awq.md,
#: compressed-tensors.md): low bits first in a stream; AWQ's nibble interleave; ``32 // bits``
#: codes per word with the top bits zero
SEQUENTIAL, INTERLEAVED, PADDED = "sequential", "awq", "padded"
ORDERS = (SEQUENTIAL, INTERLEAVED, PADDED)


class Format(NamedTuple):
    name: str  #: the ``packing=`` value
    title: str  #: for messages and reports
    bits: tuple[int, ...]  #: code widths the format can hold
    weight_axis: int  #: axis of ``q[K, N]`` the qweight words pack: 0 along K, 1 along N
    weight_order: str  #: bit order of the codes in a word (one of :data:`ORDERS`)
    zeros_order: str  #: bit order of the zero points, packed along N
    zero_offsets: tuple[int, ...]  #: zero-point conventions: 0 raw (stored z), 1 v1 (stored z - 1)
    tensors: Mapping[str, str]  #: role -> the tensor name's suffix in a checkpoint
    quant_method: str  #: the config family (``quantization_config['quant_method']``) that describes it
    act_order: bool  #: whether a ``g_idx`` can be stored
    #: whether a symmetric layer stores its zero points (2^(b-1)) and loaders expect them
    zeros_when_symmetric: bool
    #: whether a config of this format can declare layers symmetric, their zero points then
    #: implied (AWQ stores and uses every zero point: its configs say zero_point)
    states_symmetry: bool
    #: whether a trivial g_idx (``k // group_size``) is written at all
    trivial_g_idx: bool
    transposed: bool = False  #: stored as the transposes: qweight [N, words], scales [N, G], qzeros [words, G]
    partial: bool = False  #: the packed axis may end in a partly filled word (K, N need not fill blocks)
    #: formats whose files use the same config and tensor names; a reader picks the one whose
    #: shapes the tensors have (the first where several fit: then they are the same bits)
    variants: tuple[str, ...] = ()


_GPTQ_NAMES = MappingProxyType({"qweight": "qweight", "qzeros": "qzeros", "scales": "scales", "g_idx": "g_idx"})

GPTQ = Format(
    name="gptq", title="GPTQ", bits=(2, 3, 4, 8), weight_axis=0, weight_order=SEQUENTIAL,
    zeros_order=SEQUENTIAL, zero_offsets=(0, 1), tensors=_GPTQ_NAMES, quant_method="gptq", act_order=True,
    zeros_when_symmetric=True,
    states_symmetry=True, trivial_g_idx=True,
)
AWQ = Format(
    name="awq", title="AWQ", bits=(4,), weight_axis=1, weight_order=INTERLEAVED, zeros_order=INTERLEAVED,
    zero_offsets=(0,), tensors=_GPTQ_NAMES, quant_method="awq", act_order=False, zeros_when_symmetric=True, states_symmetry=False,
    trivial_g_idx=False,
)

_CT_NAMES = MappingProxyType({"qweight": "weight_packed", "qzeros": "weight_zero_point", "scales": "weight_scale",
                              "g_idx": "weight_g_idx", "shape": "weight_shape"})
#: compressed-tensors ``pack-quantized`` from 0.18 on: one dense bit stream per row of [N, K]
COMPRESSED_TENSORS = Format(
    name="compressed-tensors", title="compressed-tensors pack-quantized", bits=(2, 3, 4, 5, 6, 7, 8), weight_axis=0,
    weight_order=SEQUENTIAL, zeros_order=SEQUENTIAL, zero_offsets=(0,), tensors=_CT_NAMES,
    quant_method="compressed-tensors", act_order=True,
    zeros_when_symmetric=False, states_symmetry=True, trivial_g_idx=False, transposed=True, partial=True,
    variants=("compressed-tensors", "compressed-tensors-padded"),
)
#: compressed-tensors ``pack-quantized`` up to 0.17: ``32 // bits`` codes per word, top bits zero
COMPRESSED_TENSORS_PADDED = COMPRESSED_TENSORS._replace(
    name="compressed-tensors-padded", title="compressed-tensors pack-quantized (padded, <= 0.17)",
    weight_order=PADDED, zeros_order=PADDED,
)

#: every format, by its ``packing=`` name
FORMATS: Mapping[str, Format] = MappingProxyType(
    {f.name: f for f in (GPTQ, AWQ, COMPRESSED_TENSORS, COMPRESSED_TENSORS_PADDED)})
#: the format every kernel layout and every conversion works through
CANONICAL = GPTQ


def get(packing: str) -> Format:
    """The format named ``packing`` (validated by the caller)."""
    return FORMATS[packing]


def compressed_tensors_packing(words: int, k: int, bits: int) -> str:
    """Which compressed-tensors layout a row of ``words`` int32 words holding ``k`` codes is in:
    the dense stream (``ceil(k * bits / 32)`` words, compressed-tensors >= 0.18) or the padded
    words (``ceil(k / (32 // bits))``, <= 0.17). The word count decides; where both layouts give
    the same count for this ``k`` (always when ``bits`` divides 32) their words are the same bits
    only if ``bits`` divides 32, and the dense layout is the answer. Raises ``ValueError`` when
    the count fits neither."""
    dense = -(-k * bits // 32)
    padded = -(-k // (32 // bits))
    if words == dense and (words != padded or 32 % bits == 0):
        return COMPRESSED_TENSORS.name
    if words == padded:
        return COMPRESSED_TENSORS_PADDED.name
    if words == dense:
        return COMPRESSED_TENSORS.name
    raise ValueError(f"{words} words hold neither the dense ({dense}) nor the padded ({padded}) layout of {k} "
                     f"{bits}-bit codes")


# --------------------------------------------------------------------------- GGUF block types
#
# llama.cpp's GGUF files hold a quantized weight [N, K] (ne = [K, N]) as rows of N, each row a
# run of 32-element blocks along K (specs/gguf.md). Some block types hold group-quantized
# codes exactly; they are described here, once, like the packed formats above.

#: elements per GGUF block, along K
GGUF_BLOCK = 32


class GgufType(NamedTuple):
    name: str  #: the type's name, lower case (llama.cpp's ``Q4_0`` is ``"q4_0"``)
    title: str  #: for messages and reports
    block_bytes: int  #: bytes per block of 32 elements
    #: what a block stores per element: ``"difference"`` (q - z, shifted by ``-low`` into an
    #: unsigned field, or int8) with one scale d; ``"code"`` (q itself) with d and a minimum m
    stores: str
    low: int  #: the smallest q - z (``"difference"``) or q (``"code"``) the type can store
    high: int  #: the largest
    exact: bool  #: whether every layer it holds dequantizes to the same numbers


#: the block field: ``"difference"`` types store q - z and one scale per block
DIFFERENCE, CODE = "difference", "code"

Q4_0 = GgufType("q4_0", "Q4_0", 18, DIFFERENCE, -8, 7, True)
Q5_0 = GgufType("q5_0", "Q5_0", 22, DIFFERENCE, -16, 15, True)
Q8_0 = GgufType("q8_0", "Q8_0", 34, DIFFERENCE, -128, 127, True)
#: codes 0..15, d = s, m = -s * z rounded to float16: within 2^-7 |s| of the source
Q4_1 = GgufType("q4_1", "Q4_1", 20, CODE, 0, 15, False)

#: every GGUF block type incq writes, by name; the exact ones smallest first
GGUF_TYPES: Mapping[str, GgufType] = MappingProxyType({t.name: t for t in (Q4_0, Q5_0, Q8_0, Q4_1)})
#: the exact types in the order a conversion tries them (fewest bits per weight first)
GGUF_EXACT = (Q4_0, Q5_0, Q8_0)
#: the ``--to`` name of a GGUF model file
GGUF = "gguf"
