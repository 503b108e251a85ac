"""The format table (``incq._formats``): every format is described once, the generic
``repack`` / ``repack_zeros`` move between any two of them bit for bit, and no module outside
the table and the config readers branches on a format's name."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import incq
from incq._formats import FORMATS

ROOT = Path(incq.__file__).resolve().parent
#: the modules allowed to name formats: the table itself, and the readers / writers of configs
FORMAT_MODULES = {"_formats.py", "_config.py", "_targets.py"}
#: a format name used as a value: compared, or picked by a conditional
BRANCH = re.compile(r"""(==|!=|\bin\b|\bif\b|\belse\b)\s*\(?\s*["'](%s)["']""" % "|".join(map(re.escape, FORMATS)))


def test_no_module_outside_the_table_branches_on_a_format_name():
    offenders = []
    for path in sorted(ROOT.glob("*.py")):
        if path.name in FORMAT_MODULES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "order" in code and "awq" in code and "packing" not in code:
                continue  # the AWQ *bit order* ("awq" interleave) is a backend's vocabulary
            if BRANCH.search(code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_the_check_can_fail():
    assert BRANCH.search('    if packing == "awq":') and BRANCH.search("y = 'gptq' if a else 'awq'")
    assert BRANCH.search('x = 1 if fmt in ("gptq", "awq") else 2')


def test_every_format_is_complete():
    for fmt in FORMATS.values():
        assert set(fmt.tensors) >= {"qweight", "qzeros", "scales", "g_idx"}
        assert fmt.weight_axis in (0, 1) and set(fmt.bits) <= {2, 3, 4, 8} and set(fmt.zero_offsets) <= {0, 1}
        assert incq.FORMATS[fmt.name] is fmt


PAIRS = [(a, b) for a in FORMATS for b in FORMATS]


@pytest.mark.parametrize("src, dst", PAIRS)
@given(data=st.data())
def test_repack_between_any_two_formats_keeps_every_code(lib, src, dst, data):
    bits = data.draw(st.sampled_from(sorted(set(FORMATS[src].bits) & set(FORMATS[dst].bits))))
    k, n = 32 * data.draw(st.integers(1, 3)), 32 * data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(0, 1 << bits, (k, n)).astype(np.uint8)
    w = np.ones((k, n), np.float16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=bits, group_size=32, sym=False, packing=src)
    packed = incq.pack(q, bits, axis=FORMATS[src].weight_axis, order=FORMATS[src].weight_order)
    out = lib.repack(packed, bits, src=src, dst=dst)
    expected = incq.pack(q, bits, axis=FORMATS[dst].weight_axis, order=FORMATS[dst].weight_order)
    np.testing.assert_array_equal(out, expected, strict=True)
    z = rng.integers(1, 1 << bits, (k // 32, n)).astype(np.uint8)
    src_offset = max(FORMATS[src].zero_offsets)
    stored = incq.pack_zeros(z, bits, packing=src, zero_offset=src_offset)
    for dst_offset in FORMATS[dst].zero_offsets:
        moved = lib.repack_zeros(stored, bits, src=src, dst=dst, src_zero_offset=src_offset, dst_zero_offset=dst_offset)
        np.testing.assert_array_equal(incq.unpack_zeros(moved, bits, packing=dst, zero_offset=dst_offset), z, strict=True)


def test_repack_refuses_what_the_target_cannot_hold():
    three = incq.pack(np.zeros((32, 8), np.uint8), 3)
    with pytest.raises(incq.IncqError, match="repack: bits must be 4 with dst='awq'"):
        incq.repack(three, 3, src="gptq", dst="awq")
    with pytest.raises(incq.IncqError, match="repack: dst must be one of"):
        incq.repack(three, 3, src="gptq", dst="exl2")
    odd = incq.pack(np.zeros((8, 4), np.uint8), 4)
    with pytest.raises(incq.IncqError, match="N is divisible by 8"):
        incq.repack(odd, 4, src="gptq", dst="awq")
