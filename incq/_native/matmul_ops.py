"""The fused W4A16 matmul on the compiled kernels (``src/matmul.c``).

:func:`gemm` is the kernel call on prepared operands (GPTQ words with rows in group order,
scales ``[G, N]``, zero words ``[G, N/8]``); :func:`w4a16_matmul` is the backend function for
a layer's own tensors, and ``incq._kernels.torch_kernels`` calls :func:`gemm` for a prepared
CPU layout. Rows of x beyond :data:`FUSED_MAX_ROWS` dequantize blocks of columns with the
compiled kernel and multiply them with torch's GEMM (``specs/kernels.md``). Both run their
threads on torch's own OpenMP team where torch's libgomp is loaded (``src/module.c``).
"""

from __future__ import annotations

import torch

from incq._core import torch_backend as _torch
from incq._core import validate as v
from incq._core.formats import AWQ, CANONICAL
from incq import _native
from incq._native import _ext

#: torch dtype -> the kernels' element-type code (incq_native.h)
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: operation -> the cases it runs compiled
COVERS = {
    "w4a16_matmul": "4-bit GPTQ and AWQ layers without act-order, group size a multiple of 8, float32 x "
                    "(and float16 / bfloat16 x in the AVX-512 variants), float32 / float16 / bfloat16 scales",
}


def _address(t) -> int:
    return 0 if t is None else t.data_ptr()


#: the most rows of x the fused kernel takes, per x dtype; more rows dequantize blocks of
#: columns and multiply them with torch's GEMM. Measured on a 2-core AVX-512 BF16 machine
#: (4096 x 11008, group 128, 1 and 2 threads, interleaved with dense in one run): in bfloat16
#: and float16 the two cross between M = 64 (fused 1.17-1.22x dense, blocks 1.28x) and 96
#: (fused 1.50x, blocks 1.16x). In float32, whose dense GEMM is slower, the AVX-512 fused
#: kernel in chunks of FUSED_CHUNK_ROWS beats blocks at every M (M = 4096: 0.63x dense,
#: blocks 1.09-1.13x); the AVX2 and portable kernels (about 3x slower) keep M <= 1024.
FUSED_MAX_ROWS = {torch.bfloat16: 64, torch.float16: 64, torch.float32: 1024}
#: rows of x one fused kernel call takes; more rows run in chunks of this many, so that x's rows
#: and a tile's float32 sums stay in the cache (M = 4096, float32, 2 threads: 0.63x dense in
#: chunks of 512, 0.66x of 1024, 0.69x of 256, 0.85x in one call)
FUSED_CHUNK_ROWS = 512


def _fused_max_rows(dtype) -> float:
    if dtype == torch.float32 and _native.active() in FAST_16BIT:
        return float("inf")
    return FUSED_MAX_ROWS.get(dtype, 0)


def block_columns(threads: int) -> int:
    """Columns of W dequantized at a time for the GEMM path: 256 per thread (K x 256 bfloat16
    is 2 MiB for K = 4096, about one core's L2). Measured, bfloat16 at M = 128 and 512, time
    over dense: 1 thread 1.07-1.09x at 256 columns, 1.07-1.11x at 128, 1.14-1.38x at 512 and
    1024; 2 threads 1.08-1.13x at 512, 1.12-1.30x at 1024."""
    return 256 * max(threads, 1)


#: the variants whose fused kernel beats PyTorch's own int4 kernel on 16-bit x; on the others
#: (AVX2: ~4 ms against AVX-512's ~1.2 ms at M = 1, 4096 x 11008; portable C slower still)
#: bfloat16 / float16 x take the torch paths, float32 x (whose torch path dequantizes, ~10x
#: slower) stays compiled
FAST_16BIT = ("avx512", "avx512bf16")


def takes(dtype) -> bool:
    """Whether the compiled matmul runs x of ``dtype`` in the variant in force."""
    return dtype == torch.float32 or (dtype in DTYPES and _native.active() in FAST_16BIT)


def path(m: int, dtype) -> str:
    """Which compiled path ``m`` rows of x in ``dtype`` take: "fused" or "blocks"."""
    return "fused" if m <= _fused_max_rows(dtype) else "blocks"


def gemm(x2, words, scales, zero_words, group_size: int, bias=None, *, zero_offset: int = 0, zeros_awq: bool = False,
         force: str | None = None):
    """``x2 [M, K] @ W + bias`` in x2's dtype on the compiled kernels; W from GPTQ ``words``
    ``[K/8, N]`` (contiguous), ``scales [G, N]`` and ``zero_words [G, N/8]`` (or None).
    ``force`` ("fused" / "blocks") overrides :func:`path`, for tests and benchmarks."""
    m, k = x2.shape
    row_stride, step = x2.stride()
    if step != 1:
        x2 = x2.contiguous()
        row_stride = k
    dtype = x2.dtype
    n = words.shape[1]
    if force == "blocks" or (force is None and m > _fused_max_rows(dtype)):
        return _blocks(x2, words, scales, zero_words, group_size, bias, zero_offset, zeros_awq)
    code = DTYPES[dtype]
    out = torch.empty(m, n, dtype=dtype)
    size = x2.element_size()
    for i in range(0, max(m, 1), FUSED_CHUNK_ROWS):
        rows = min(FUSED_CHUNK_ROWS, m - i)
        _ext.gemm(
            x2.data_ptr() + i * row_stride * size, code, rows, k, row_stride, words.data_ptr(), n, scales.data_ptr(),
            DTYPES[scales.dtype], 0 if zero_words is None else zero_words.data_ptr(), zero_offset, int(zeros_awq),
            group_size, 0 if bias is None else bias.data_ptr(), 0 if bias is None else DTYPES[bias.dtype],
            out.data_ptr() + i * n * size, code, torch.get_num_threads(),
        )
    return out


def _blocks(x2, words, scales, zero_words, group_size, bias, zero_offset, zeros_awq):
    """Dequantize-then-GEMM in blocks of columns: each block of W is written into the cache
    (bfloat16 for bfloat16 and float16 x, transposed where K and the group size are multiples
    of 32; float32 for float32) and multiplied at once, so every output element comes from one
    GEMM over all of K."""
    m, k = x2.shape
    n = words.shape[1]
    compute = torch.float32 if x2.dtype == torch.float32 else torch.bfloat16
    threads = torch.get_num_threads()
    xs = x2 if x2.dtype == compute else _converted(x2, compute, threads)
    out = _fresh((m, n), x2.dtype)
    bias32 = None if bias is None else bias.to(torch.float32)
    columns = block_columns(threads)
    # 16-bit blocks are written [nb, K], F.linear's weight layout, which torch's bfloat16 GEMM
    # multiplies faster than [K, nb] (measured, M = 128 and 256 on 2 threads: 1.09-1.21x dense
    # against 1.25-1.42x; on 1 thread within 3% either way); float32 blocks stay [K, nb], whose
    # kernel writes them in half the time
    transposed = compute == torch.bfloat16 and k % 32 == 0 and group_size % 32 == 0
    shape = (lambda nb: (nb, k)) if transposed else (lambda nb: (k, nb))
    block = torch.empty(shape(min(n, columns)), dtype=compute)
    for n0 in range(0, n, columns):
        nb = min(columns, n - n0)
        w = block if nb == min(n, columns) else torch.empty(shape(nb), dtype=compute)
        _ext.dequantize_block(words.data_ptr(), n, k, scales.data_ptr(), DTYPES[scales.dtype], _address(zero_words),
                              zero_offset, int(zeros_awq), group_size, n0, nb, w.data_ptr(), DTYPES[compute], threads,
                              int(transposed))
        part = torch.nn.functional.linear(xs, w) if transposed else xs @ w
        if bias32 is not None:  # added in float32 to the product rounded to the compute dtype
            part = part.to(torch.float32) + bias32[n0:n0 + nb]
        # rounded once more to x's dtype, block by block (no [M, N] temporaries)
        if part.dtype == out.dtype:
            out[:, n0:n0 + nb] = part
        else:
            _ext.convert_rows(part.data_ptr(), DTYPES[part.dtype], nb, out.data_ptr() + n0 * out.element_size(),
                              DTYPES[out.dtype], n, m, nb, threads)
    return out


def _fresh(shape, dtype):
    """A new tensor advised as transparent huge pages where it is 4 MiB or more, as the compiled
    kernels advise their outputs: the blocks' products are copied into the output column block
    by column block, and at M = 4096 its 4 KiB page faults took 4-16% of the time (measured
    interleaved, 1 and 2 threads, 4096 x 11008; from M = 128 to 1024 the same either way)."""
    t = torch.empty(shape, dtype=dtype)
    _ext.advise_huge(t.data_ptr(), t.numel() * t.element_size())
    return t


def _converted(x2, dtype, threads: int):
    """``x2.to(dtype)`` (nearest even, as torch rounds) by the compiled conversion, which runs at
    the speed of memory where torch's between the 16-bit types takes 1.5 ns an element (24 ms
    for 4096 x 4096 on one thread); x2's rows may be strided."""
    m, k = x2.shape
    if x2.stride(0) < k:  # rows that overlap (an expanded x): read as written out
        x2 = x2.contiguous()
    out = _fresh((m, k), dtype)
    _ext.convert_rows(x2.data_ptr(), DTYPES[x2.dtype], x2.stride(0), out.data_ptr(), DTYPES[dtype], k, m, k, threads)
    return out


_PACKINGS = {CANONICAL.name: False, AWQ.name: True}  # packing -> whether the zero words are AWQ-ordered


def _fits(x, scales, g_idx, bias, bits, group_size, packing) -> bool:
    """Whether the compiled kernel takes this call (the validated inputs share one device)."""
    if bits != 4 or packing not in _PACKINGS or group_size % 8 or not x.is_cpu or not takes(x.dtype):
        return False
    if scales.dtype not in DTYPES or (bias is not None and bias.dtype not in DTYPES):
        return False
    if torch.compiler.is_compiling():  # a compiled graph takes the torch backend's ops
        return False
    return g_idx is None or _trivial(g_idx, x.shape[-1], group_size)


def _trivial(g_idx, k: int, group_size: int) -> bool:
    """Whether ``g_idx`` is ``k // group_size`` (no act-order): read once per tensor and write,
    as the layer's value checks are (``incq._core.validate.passed_before``)."""
    check = ("trivial g_idx", group_size)
    if v.passed_before(g_idx, check):
        return True
    if not torch.equal(g_idx.to(torch.int64), torch.arange(k) // group_size):
        return False
    v.remember_passed(g_idx, check)
    return True


def w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing, zero_offset):
    if not _fits(x, scales, g_idx, bias, bits, group_size, packing):
        return _torch.w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing, zero_offset)
    awq = _PACKINGS[packing]
    if awq:
        from incq._native import layout_ops

        words = layout_ops.awq_to_gptq(qweight, 4)
    else:
        words = qweight.contiguous()
    zeros = None if qzeros is None else qzeros.contiguous()
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    y = gemm(x2, words, scales.contiguous(), zeros, group_size, bias, zero_offset=zero_offset, zeros_awq=awq)
    return y if x2 is x else y.reshape(*x.shape[:-1], y.shape[-1])
