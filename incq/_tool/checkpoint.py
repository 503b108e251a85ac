"""Quantized checkpoints on disk: reading their configs and safetensors headers, finding the
quantized layers, checking them, and converting them tensor by tensor.

Headers and tensors are read with the ``safetensors`` library (torch tensors when torch is
installed, NumPy arrays otherwise). Output files are written in the safetensors format
(an 8-byte little-endian header length, a JSON header, then each tensor's bytes in header
order), one tensor at a time, so that a conversion never holds more than one tensor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from incq._core import api as _api
from incq._tool import fs as _fs
from incq._core.bridge import to_host
from incq._tool.config import EXAMPLE_FORMATS, config_kwargs, example_config, layer_settings
from incq._errors import IncqError
from incq._core import formats as formats
from incq._core.bits import logical_shape, packed_shape, scales_shape, values_per_block, zeros_shape

CONFIG_FILES = ("config.json", "quantization_config.json", "quantize_config.json")
INDEX_FILE = "model.safetensors.index.json"
LAYER_TENSORS = ("qweight", "qzeros", "scales", "g_idx")
#: safetensors dtype names -> NumPy dtypes (BF16 has none: such tensors need torch)
NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
    "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


CheckpointError = _fs.CheckpointError
#: dtypes a layer's tensors may have
SCALE_DTYPES = ("F16", "BF16", "F32")
INDEX_DTYPES = ("I32", "I64")


class TensorInfo(NamedTuple):
    file: str
    dtype: str  # safetensors dtype name: "I32", "F16", "BF16", ...
    shape: tuple[int, ...]


class Layer(NamedTuple):
    prefix: str
    kwargs: dict  # bits, group_size, packing, zero_offset
    sym: bool
    k: int
    n: int
    tensors: dict  # "qweight" / "qzeros" / "scales" / "g_idx" -> tensor name


class Checkpoint(NamedTuple):
    path: Path
    config_file: str  # where the quantization config was found
    quant_config: dict
    files: tuple[str, ...]  # safetensors files, in order
    index: dict | None  # the sharded checkpoint's index file, or None
    tensors: dict  # tensor name -> TensorInfo


def torch_or_none():
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


def _safe_open(path: Path):
    from safetensors import safe_open

    return safe_open(str(path), framework="pt" if torch_or_none() is not None else "numpy")


def _read_json(path: Path) -> Any:
    try:
        with _fs.read_only(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to read") from None


def find_quant_config(path: Path, follow_symlinks: bool = False) -> tuple[str, dict]:
    """(file name, quantization config) from config.json, quantization_config.json or quantize_config.json."""
    for name in CONFIG_FILES:
        if not (path / name).is_file():
            continue
        data = _read_json(_fs.confine(path, name, str(path), follow_symlinks))
        if name == "config.json":
            if isinstance(data, dict) and isinstance(data.get("quantization_config"), dict):
                return name, data["quantization_config"]
            continue
        if isinstance(data, dict):
            return name, data
    raise CheckpointError(f"{path}: no quantization config (looked for {', '.join(CONFIG_FILES)})")


def open_checkpoint(path, follow_symlinks: bool = False) -> Checkpoint:
    """Read a checkpoint directory's quantization config and safetensors headers (no tensor data).

    Every file it names is confined to the directory (``incq._tool.fs.confine``); with
    ``follow_symlinks`` a symlink inside it may point to a regular file elsewhere."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    path = path.resolve()
    config_file, quant_config = find_quant_config(path, follow_symlinks)
    index = None
    if (path / INDEX_FILE).is_file():
        index = _read_json(_fs.confine(path, INDEX_FILE, str(path), follow_symlinks))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path / INDEX_FILE}: no weight_map")
        for name, file in weight_map.items():
            if not isinstance(file, str):
                raise CheckpointError(f"{path / INDEX_FILE}: weight_map[{name!r}] must be a file name, got {file!r}")
        files = tuple(dict.fromkeys(weight_map.values()))
        where = f"{path / INDEX_FILE} weight_map"
    else:
        files = tuple(sorted(p.name for p in path.iterdir() if p.name.endswith(".safetensors")))
        if not files:
            raise CheckpointError(f"{path}: no .safetensors files")
        where = str(path)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        full = _fs.confine(path, file, where, follow_symlinks)
        try:
            with _safe_open(full) as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    if name in tensors:
                        raise CheckpointError(f"{path}: tensor {name} is in both {tensors[name].file} and {file}")
                    tensors[name] = TensorInfo(file, piece.get_dtype(), tuple(piece.get_shape()))
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error type for bad files
            if isinstance(e, OSError):
                raise
            raise CheckpointError(f"{full}: not a readable safetensors file ({e})") from None
    if index is not None:
        for name, file in index["weight_map"].items():
            if name not in tensors or tensors[name].file != file:
                raise CheckpointError(f"{path / INDEX_FILE}: tensor {name} is not in {file}")
        unlisted = sorted(set(tensors) - set(index["weight_map"]))
        if unlisted:
            raise CheckpointError(f"{path / INDEX_FILE}: tensor {unlisted[0]} (in {tensors[unlisted[0]].file}) "
                                  "is not in the weight_map")
    return Checkpoint(path, config_file, quant_config, files, index, tensors)


def read_tensor(ckpt: Checkpoint, name: str):
    """One tensor's data (a torch tensor when torch is installed, else a NumPy array)."""
    info = ckpt.tensors.get(name)
    if info is None:
        raise CheckpointError(f"{ckpt.path}: tensor {name} is missing")
    if info.dtype == "BF16" and torch_or_none() is None:
        raise CheckpointError(f"{ckpt.path}: tensor {name} is bfloat16, which needs torch (pip install torch)")
    try:
        with _safe_open(ckpt.path / info.file) as f:
            return f.get_tensor(name)
    except Exception as e:
        if isinstance(e, OSError):
            raise
        raise CheckpointError(f"{ckpt.path / info.file}: cannot read tensor {name} ({e})") from None


def expected_shapes(kwargs: dict, k: int, n: int) -> dict[str, tuple[int, ...]]:
    """The shapes of a layer's tensors in its format, for a weight of K x N."""
    bits, g, packing = kwargs["bits"], kwargs["group_size"], kwargs["packing"]
    groups = 1 if g == -1 else k // g
    return {"qweight": packed_shape(k, n, bits, packing), "scales": scales_shape(groups, n, packing),
            "qzeros": zeros_shape(groups, n, bits, packing), "g_idx": (k,), "shape": (2,)}


#: the tensor-name suffixes that mark a quantized layer, one per format's qweight name
QWEIGHT_SUFFIXES = tuple(dict.fromkeys("." + f.tensors["qweight"] for f in formats.FORMATS.values()))


def find_layers(ckpt: Checkpoint, problems: list | None = None) -> list[Layer]:
    """Every quantized layer (a ``<prefix>.qweight`` tensor, or its format's name for it), with
    its keyword arguments; shapes are checked against the config. A shape that contradicts it
    raises, or, when ``problems`` is a list, is appended to it and the layer left out."""
    layers = []
    for name in ckpt.tensors:
        suffix = next((s for s in QWEIGHT_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        prefix = name[: -len(suffix)]
        try:
            kwargs = config_kwargs(ckpt.quant_config, layer=prefix)
            settings = layer_settings(ckpt.quant_config, prefix)
        except IncqError as e:
            raise CheckpointError(f"{ckpt.path}: {e}") from None
        if kwargs is None:
            raise CheckpointError(f"{ckpt.path}: {prefix} holds a {suffix[1:]}, but the config leaves it unquantized")
        fmt = formats.get(kwargs["packing"])
        if suffix != "." + fmt.tensors["qweight"]:
            raise CheckpointError(f"{ckpt.path}: {name}: the config describes {fmt.title}, whose packed weights are "
                                  f"named {fmt.tensors['qweight']}")
        tensors = {role: f"{prefix}.{t}" for role, t in fmt.tensors.items() if f"{prefix}.{t}" in ckpt.tensors}
        if "scales" not in tensors:
            raise CheckpointError(f"{ckpt.path}: {prefix} has a {suffix[1:]} but no {fmt.tensors['scales']}")
        qweight = ckpt.tensors[name]
        if qweight.dtype != "I32" or len(qweight.shape) != 2:
            raise CheckpointError(f"{ckpt.path}: {name} must be a 2-d int32 tensor, got {qweight.dtype} {qweight.shape}")
        for part, allowed in (("scales", SCALE_DTYPES), ("qzeros", ("I32",)), ("g_idx", INDEX_DTYPES),
                              ("shape", INDEX_DTYPES)):
            if part in tensors and ckpt.tensors[tensors[part]].dtype not in allowed:
                raise CheckpointError(f"{ckpt.path}: {tensors[part]} is {ckpt.tensors[tensors[part]].dtype}; "
                                      f"{part} must be {' or '.join(allowed)}")
        if fmt.partial:
            kwargs, k, n = _partial_layer(ckpt, prefix, fmt, kwargs, tensors, qweight)
        else:
            k, n = logical_shape(qweight.shape, kwargs["bits"], kwargs["packing"])
        g = kwargs["group_size"]
        if g != -1 and (g < 1 or k % g):
            raise CheckpointError(f"{ckpt.path}: {prefix}: group_size {g} does not divide K = {k}")
        wrong = [f"{tensors[t]} has shape {ckpt.tensors[tensors[t]].shape}, the config ({kwargs['bits']}-bit, "
                 f"group_size {g}, {kwargs['packing']}) and {suffix[1:]} {qweight.shape} say {shape}"
                 for t, shape in expected_shapes(kwargs, k, n).items()
                 if t in tensors and ckpt.tensors[tensors[t]].shape != shape]
        if wrong and problems is None:
            raise CheckpointError(f"{ckpt.path}: {wrong[0]}")
        if wrong:
            problems.extend(wrong)
            continue
        layers.append(Layer(prefix, kwargs, settings["sym"], k, n, tensors))
    if not layers and not problems:
        raise CheckpointError(f"{ckpt.path}: no quantized layers (no tensor ends in "
                              f"{' or '.join(QWEIGHT_SUFFIXES)})")
    return layers


def _version(text) -> tuple[int, ...]:
    """A release number as a tuple ("0.17.1" -> (0, 17, 1)); no version reads as the newest."""
    try:
        return tuple(int(part) for part in str(text).split(".")[:3])
    except ValueError:
        return (1 << 30,)


def _partial_layer(ckpt, prefix, fmt, kwargs, tensors, qweight):
    """A layer of a format that stores its logical shape (compressed-tensors' ``weight_shape``):
    K and N from it, and the variant of the format whose word counts the tensors have."""
    if "shape" not in tensors:
        raise CheckpointError(f"{ckpt.path}: {prefix} has no {fmt.tensors['shape']}, which {fmt.title} stores")
    stored = [int(v) for v in np.asarray(to_host(read_tensor(ckpt, tensors["shape"]))).reshape(-1)]
    if len(stored) != 2 or min(stored) < 1:
        raise CheckpointError(f"{ckpt.path}: {tensors['shape']} must hold two positive sizes, got {stored}")
    n, k = stored if fmt.transposed else stored[::-1]
    fits = [v for v in fmt.variants or (fmt.name,) if tuple(qweight.shape) == packed_shape(k, n, kwargs["bits"], v)]
    if len(fits) > 1 and 32 % kwargs["bits"]:
        # a few small K give both layouts one word count (3-bit K = 30: 3 words each) but not
        # the same bits: the writer's version decides (the padded layout ended with 0.17)
        fits = [fits[-1] if _version(ckpt.quant_config.get("version")) < (0, 18) else fits[0]]
    if fits:
        return {**kwargs, "packing": fits[0], "k": k}, k, n
    raise CheckpointError(f"{ckpt.path}: {prefix}.{fmt.tensors['qweight']} has shape {qweight.shape}, which no "
                          f"layout of {fmt.title} gives {k} x {n} {kwargs['bits']}-bit weights")


def layer_arrays(ckpt: Checkpoint, layer: Layer) -> tuple:
    """(qweight, scales, qzeros, g_idx) of a layer, qzeros / g_idx None when absent."""
    return tuple(read_tensor(ckpt, layer.tensors[t]) if t in layer.tensors else None
                 for t in ("qweight", "scales", "qzeros", "g_idx"))


def trivial_g_idx(g_idx, k: int, group_size: int) -> bool:
    g = k if group_size == -1 else group_size
    return bool(np.array_equal(to_host(g_idx).astype(np.int64), np.arange(k) // g))


# --------------------------------------------------------------------------- inspect


def anomalies(ckpt: Checkpoint, layer: Layer) -> list[str]:
    """What in a layer contradicts its declared format (reads qzeros, scales and g_idx)."""
    found = []
    kw = layer.kwargs
    bits, packing, zero_offset = kw["bits"], kw["packing"], kw["zero_offset"]
    scales = to_host(read_tensor(ckpt, layer.tensors["scales"]))
    bad = int(np.count_nonzero(~np.isfinite(scales)))
    if bad:
        found.append(f"{layer.prefix}: {bad} non-finite scale(s)")
    if "qzeros" in layer.tensors and 1 in formats.get(packing).zero_offsets:
        qzeros = to_host(read_tensor(ckpt, layer.tensors["qzeros"]))
        as_v1 = _api.unpack_zeros(qzeros, bits, zero_offset=1)
        as_raw = _api.unpack_zeros(qzeros, bits, zero_offset=0)
        mid = 1 << (bits - 1)
        if layer.sym and zero_offset == 1 and (as_raw == mid).all() and not (as_v1 == mid).all():
            found.append(f"{layer.prefix}: declared v1 (stored z - 1) but holds raw zero points "
                         f"({mid} everywhere when read raw): a v1 reader is off by one step")
        if layer.sym and zero_offset == 0 and (as_v1 == mid).all() and not (as_raw == mid).all():
            found.append(f"{layer.prefix}: declared raw zero points but holds v1 words "
                         f"({mid} everywhere when read as v1): a raw reader is off by one step")
        if zero_offset == 1:
            zeros = int(np.count_nonzero(as_v1 == 0))
            if zeros:
                found.append(f"{layer.prefix}: {zeros} zero point(s) of 0 under v1, which readers decode differently")
    if "g_idx" in layer.tensors:
        g_idx = to_host(read_tensor(ckpt, layer.tensors["g_idx"])).astype(np.int64)
        groups = 1 if kw["group_size"] == -1 else layer.k // kw["group_size"]
        if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups):
            found.append(f"{layer.prefix}: g_idx holds groups outside [0, {groups - 1}]")
    return found


# --------------------------------------------------------------------------- convert


class TensorJob(NamedTuple):
    """How one output tensor is made: "copy" a source tensor, or make it from one: "qweight",
    "qzeros", "scales" (transposed), "new_qzeros" (a symmetric layer that gains stored zero
    points), "shape" (the logical shape a format stores)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    action: str
    source: str  # source tensor name
    bits: int
    src: tuple  # (packing, zero_offset) of the source
    dst: tuple  # (packing, zero_offset) of the target
    k: int = 0  # the layer's K x N
    n: int = 0


def plan_conversion(ckpt: Checkpoint, layers: list[Layer], to: str, zero_offset: int,
                    symmetric: bool = False) -> dict[str, list[TensorJob]]:
    """Per output file, the tensors to write in format ``to`` with ``zero_offset``; with
    ``symmetric`` (every zero point is 2^(b-1), and the target's config says so) a target that
    implies symmetric zero points stores none. Refuses, naming the layer, what the target cannot
    hold."""
    target = formats.get(to)
    dst = (to, zero_offset)
    by_tensor: dict[str, tuple[Layer, str]] = {}
    for layer in layers:
        _check_target(ckpt, layer, target, zero_offset)
        for role, t in layer.tensors.items():
            by_tensor[t] = (layer, role)
    plan: dict[str, list[TensorJob]] = {file: [] for file in ckpt.files}
    for name, info in ckpt.tensors.items():
        if name not in by_tensor:
            plan[info.file].append(TensorJob(name, info.dtype, info.shape, "copy", name, 0, (), ()))
            continue
        layer, role = by_tensor[name]
        plan[info.file] += _layer_jobs(ckpt, layer, role, name, info, target, dst, symmetric)
    return plan


def _check_target(ckpt, layer, target, zero_offset) -> None:
    kw = layer.kwargs
    if kw["bits"] not in target.bits:
        raise CheckpointError(f"{layer.prefix}: {kw['bits']}-bit weights cannot be stored in {target.title}, which "
                              f"packs {'/'.join(map(str, target.bits))}-bit codes only")
    per = values_per_block(kw["bits"], target.weight_order)
    if not target.partial and (layer.k, layer.n)[target.weight_axis] % per:
        raise CheckpointError(f"{layer.prefix}: {target.title} packs along {'KN'[target.weight_axis]}, which must be "
                              f"a multiple of {per} (K x N = {layer.k} x {layer.n})")
    zero_per = values_per_block(kw["bits"], target.zeros_order)
    if not target.partial and layer.n % zero_per:
        raise CheckpointError(f"{layer.prefix}: {target.title} packs zero points along N, which must be a multiple "
                              f"of {zero_per} (N = {layer.n})")
    if not target.act_order and act_order(ckpt, layer):
        raise CheckpointError(f"{layer.prefix}: act-order (a g_idx that is not k // group_size) cannot be "
                              f"stored in {target.title}, which has no g_idx")
    if zero_offset == 1 and "qzeros" in layer.tensors:
        qzeros = to_host(read_tensor(ckpt, layer.tensors["qzeros"]))
        z = _api.unpack_zeros(qzeros, kw["bits"], packing=kw["packing"], zero_offset=kw["zero_offset"], n=layer.n)
        zeros = int(np.count_nonzero(z == 0))
        if zeros:
            raise CheckpointError(f"{layer.prefix}: {zeros} zero point(s) of 0 cannot be stored as v1 (z - 1); "
                                  "convert with --zeros raw")


def act_order(ckpt, layer) -> bool:
    return "g_idx" in layer.tensors and not trivial_g_idx(read_tensor(ckpt, layer.tensors["g_idx"]), layer.k,
                                                           layer.kwargs["group_size"])


def _layer_jobs(ckpt, layer, role, name, info, target, dst, symmetric) -> list[TensorJob]:
    """The output tensors made from the tensor ``name`` (role ``role``) of ``layer``."""
    kw = layer.kwargs
    src = (kw["packing"], kw["zero_offset"])
    source = formats.get(kw["packing"])
    out = f"{layer.prefix}.{target.tensors.get(role, role)}"
    groups = 1 if kw["group_size"] == -1 else layer.k // kw["group_size"]
    job = dict(bits=kw["bits"], src=src, dst=dst, k=layer.k, n=layer.n)
    to = dst[0]
    if role == "qweight":
        jobs = [TensorJob(out, "I32", packed_shape(layer.k, layer.n, kw["bits"], to), "qweight", name, **job)]
        if "qzeros" not in layer.tensors and (target.zeros_when_symmetric or not symmetric):
            jobs.append(TensorJob(f"{layer.prefix}.{target.tensors['qzeros']}", "I32",
                                  zeros_shape(groups, layer.n, kw["bits"], to), "new_qzeros", name, **job))
        if "shape" in target.tensors and "shape" not in layer.tensors:
            jobs.append(TensorJob(f"{layer.prefix}.{target.tensors['shape']}", "I64", (2,), "shape", name, **job))
        return jobs
    if role == "qzeros":
        if symmetric and not target.zeros_when_symmetric:
            return []
        return [TensorJob(out, "I32", zeros_shape(groups, layer.n, kw["bits"], to), "qzeros", name, **job)]
    if role == "scales":
        action = "scales" if source.transposed != target.transposed else "copy"
        return [TensorJob(out, info.dtype, scales_shape(groups, layer.n, to), action, name, **job)]
    if role == "g_idx":
        if "g_idx" not in target.tensors or (not target.trivial_g_idx and not act_order(ckpt, layer)):
            return []  # trivial (non-trivial ones were refused where the target has none)
        return [TensorJob(out, info.dtype, info.shape, "copy", name, **job)]
    if role == "shape":
        if "shape" not in target.tensors:
            return []
        return [TensorJob(out, info.dtype, info.shape, "copy", name, **job)]
    return [TensorJob(out, info.dtype, info.shape, "copy", name, **job)]


def run_job(job: TensorJob, data):
    """The output tensor of ``job`` from its source tensor ``data``."""
    if job.action == "copy":
        return data
    bits, (src_packing, src_offset), (dst_packing, dst_offset) = job.bits, job.src, job.dst
    if job.action == "qweight":
        if src_packing == dst_packing:
            return data
        return _api.repack(data, bits, src=src_packing, dst=dst_packing, k=job.k)
    if job.action == "qzeros":
        if (src_packing, src_offset) == (dst_packing, dst_offset):
            return data
        return _api.repack_zeros(data, bits, src=src_packing, dst=dst_packing, src_zero_offset=src_offset,
                                 dst_zero_offset=dst_offset, n=job.n)
    if job.action == "scales":
        return np.ascontiguousarray(data.T) if isinstance(data, np.ndarray) else data.t().contiguous()
    if job.action == "shape":
        stored = [job.n, job.k] if formats.get(dst_packing).transposed else [job.k, job.n]
        return _like(data, np.array(stored, dtype=np.int64))
    # new_qzeros: a symmetric layer's implicit zero point, stored
    mid = 1 << (bits - 1)
    zeros_groups = job.shape[1] if formats.get(dst_packing).transposed else job.shape[0]
    zeros = _like(data, np.full((zeros_groups, job.n), mid, dtype=np.uint8))
    return _api.pack_zeros(zeros, bits, packing=dst_packing, zero_offset=dst_offset)


def _like(data, array: np.ndarray):
    """``array`` as the kind of array ``data`` is (NumPy, or a torch tensor)."""
    return array if isinstance(data, np.ndarray) else torch_or_none().from_numpy(array)


def tensor_bytes(data) -> memoryview:
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    torch = torch_or_none()
    return memoryview(data.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_safetensors(folder: Path, rel: str, jobs: list[TensorJob], produce, metadata: dict | None,
                      on_tensor=None) -> int:
    """Write ``jobs`` in order into a new safetensors file ``folder / rel``, one tensor at a
    time; returns bytes written. The file must not exist (``incq._tool.fs.create``).

    ``produce(job)`` returns the tensor's data; its byte size must match the job's dtype and shape.
    """
    header: dict[str, Any] = {}
    offset = 0
    sizes = []
    for job in jobs:
        size = _itemsize(job.dtype) * int(np.prod(job.shape, dtype=np.int64))
        header[job.name] = {"dtype": job.dtype, "shape": list(job.shape), "data_offsets": [offset, offset + size]}
        offset += size
        sizes.append(size)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    written = 0
    with os.fdopen(_fs.create(folder, rel), "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for job, size in zip(jobs, sizes):
            data = tensor_bytes(produce(job))
            if data.nbytes != size:
                raise CheckpointError(f"{job.name}: produced {data.nbytes} bytes, expected {size}")
            out.write(data)
            del data  # free this tensor before the next is read: one tensor in memory at a time
            written += size
            if on_tensor is not None:
                on_tensor()
        out.flush()
        os.fsync(out.fileno())
    return written + 8 + len(text)


_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _itemsize(dtype: str) -> int:
    if dtype not in _ITEMSIZE:
        raise CheckpointError(f"unsupported safetensors dtype {dtype}")
    return _ITEMSIZE[dtype]


def file_metadata(ckpt: Checkpoint, file: str) -> dict | None:
    with _safe_open(ckpt.path / file) as f:
        return f.metadata()


# --------------------------------------------------------------------------- example


def write_example(path: Path, fmt: str, shards: int = 2, layers: int = 2, hidden: int = 512, inner: int = 1024,
                  seed: int = 0) -> None:
    """A small synthetic Llama-shaped checkpoint in ``fmt``: 4-bit, group 128, asymmetric, fp16
    scales, with unquantized embeddings and norms, in ``shards`` files."""
    if path.exists():
        raise CheckpointError(f"{path} exists")
    base, packing, zero_offset = EXAMPLE_FORMATS[fmt]
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((256, hidden)).astype(np.float16)}
    for i in range(layers):
        for name, (k, n) in {"self_attn.q_proj": (hidden, hidden), "mlp.up_proj": (hidden, inner),
                             "mlp.down_proj": (inner, hidden)}.items():
            w = (rng.standard_normal((k, n)) * 0.02).astype(np.float16)
            qweight, scales, qzeros, _ = _api.quantize(w, bits=4, group_size=128, sym=False, packing=packing,
                                                       zero_offset=zero_offset)
            prefix = f"model.layers.{i}.{name}"
            tensors.update({f"{prefix}.qweight": qweight, f"{prefix}.scales": scales, f"{prefix}.qzeros": qzeros})
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float16)
    quant = {**base, "bits": 4, "group_size": 128, "sym": False}
    quant = example_config(fmt, quant)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
                                                  "intermediate_size": inner, "num_hidden_layers": layers,
                                                  "torch_dtype": "float16", "quantization_config": quant}, indent=2))
    names = list(tensors)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)] if shards > 1 else ["model.safetensors"]
    chunks = np.array_split(np.arange(len(names)), len(files))
    dtypes = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}
    weight_map = {}
    for file, chunk in zip(files, chunks):
        jobs = [TensorJob(names[i], dtypes[tensors[names[i]].dtype], tensors[names[i]].shape, "copy", names[i], 0, (), ())
                for i in chunk]
        write_safetensors(path, file, jobs, lambda job: tensors[job.name], {"format": "pt"})
        weight_map.update({job.name: file for job in jobs})
    if len(files) > 1:
        total = sum(a.nbytes for a in tensors.values())
        _fs.write_text(path, INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2))
