"""The format table (``incq._core.formats``): every format is described once, the generic
``repack`` / ``repack_zeros`` move between any two of them bit for bit, and no module outside
the table writes a format's or a bit order's name as a value."""

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import incq
from incq._core.formats import FORMATS, ORDERS

ROOT = Path(incq.__file__).resolve().parent
#: the one module that names formats and bit orders: the table itself
FORMAT_MODULES = {"_core/formats.py"}
NAMES = sorted(set(FORMATS) | set(ORDERS))
#: a format name used as a value: compared, or picked by a conditional


def named_values(source: str) -> list[int]:
    """Lines where a format or bit-order name is written as a value (a string constant equal
    to one), leaving out docstrings and the defaults of public signatures."""
    tree = ast.parse(source)
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            allowed |= {id(d) for d in node.args.defaults + node.args.kw_defaults if d is not None}
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body and isinstance(
                node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            allowed.add(id(node.body[0].value))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in NAMES and id(node) not in allowed]


def test_no_module_outside_the_table_names_a_format_or_bit_order():
    offenders = []
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 15  # every module of the package is searched
    for path in modules:
        if path.relative_to(ROOT).as_posix() in FORMAT_MODULES:
            continue
        lines = path.read_text().splitlines()
        offenders += [f"{path.relative_to(ROOT)}:{n}: {lines[n - 1].strip()}" for n in named_values("\n".join(lines))]
    assert offenders == []


def test_the_check_can_fail():
    assert named_values('if packing == "awq":\n    pass') == [1]
    assert named_values('TABLE = {"x": ("gptq", 0)}') == [1]
    assert named_values('def f(order="sequential"):\n    """Takes "padded" too."""') == []


def test_every_format_is_complete():
    for fmt in FORMATS.values():
        assert set(fmt.tensors) >= {"qweight", "qzeros", "scales", "g_idx"}
        assert fmt.weight_axis in (0, 1) and set(fmt.bits) <= set(range(2, 9)) and set(fmt.zero_offsets) <= {0, 1}
        assert {fmt.weight_order, fmt.zeros_order} <= {"sequential", "awq", "padded"}
        assert incq.FORMATS[fmt.name] is fmt


def stored_words(q, bits, fmt):
    """The qweight of codes ``q[K, N]`` in ``fmt``, from the format's description and
    ``incq.pack`` alone: pad the packed axis to whole blocks, pack, keep the words that hold
    codes (a format whose last word may be partly filled), transpose where the format does."""
    axis, order = fmt.weight_axis, fmt.weight_order
    length = q.shape[axis]
    per = {"padded": 32 // bits}.get(order, 32 // np.gcd(32, bits))
    widths = [(0, 0), (0, 0)]
    widths[axis] = (0, -length % per)
    words = incq.pack(np.pad(q, widths), bits, axis=axis, order=order)
    if fmt.partial:
        keep = -(-length // (32 // bits)) if order == "padded" else -(-length * bits // 32)
        words = np.take(words, np.arange(keep), axis=axis)
    return np.ascontiguousarray(words.T if fmt.transposed else words)


PAIRS = [(a, b) for a in FORMATS for b in FORMATS]


@pytest.mark.parametrize("src, dst", PAIRS)
@given(data=st.data())
@settings(max_examples=15)
def test_repack_between_any_two_formats_keeps_every_code(lib, src, dst, data):
    a, b = FORMATS[src], FORMATS[dst]
    bits = data.draw(st.sampled_from(sorted(set(a.bits) & set(b.bits))))
    odd = a.partial and b.partial
    k = data.draw(st.sampled_from([32, 64, 96] + ([40, 200] if odd else [])))
    n = 32 * data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(0, 1 << bits, (k, n)).astype(np.uint8)
    out = lib.repack(stored_words(q, bits, a), bits, src=src, dst=dst, k=k if a.partial else None)
    np.testing.assert_array_equal(out, stored_words(q, bits, b), strict=True)
    z = rng.integers(1, 1 << bits, (2, n)).astype(np.uint8)
    src_offset = max(a.zero_offsets)
    stored = incq.pack_zeros(z, bits, packing=src, zero_offset=src_offset)
    for dst_offset in b.zero_offsets:
        moved = lib.repack_zeros(stored, bits, src=src, dst=dst, src_zero_offset=src_offset, dst_zero_offset=dst_offset,
                                 n=n)
        np.testing.assert_array_equal(incq.unpack_zeros(moved, bits, packing=dst, zero_offset=dst_offset, n=n), z,
                                      strict=True)


def test_repack_refuses_what_the_target_cannot_hold():
    three = incq.pack(np.zeros((32, 8), np.uint8), 3)
    with pytest.raises(incq.IncqError, match="repack: bits must be 4 with dst='awq'"):
        incq.repack(three, 3, src="gptq", dst="awq")
    with pytest.raises(incq.IncqError, match="repack: dst must be one of"):
        incq.repack(three, 3, src="gptq", dst="exl2")
    odd = incq.pack(np.zeros((8, 4), np.uint8), 4)
    with pytest.raises(incq.IncqError, match="N is divisible by 8"):
        incq.repack(odd, 4, src="gptq", dst="awq")
