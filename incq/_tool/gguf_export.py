"""``incq convert SRC OUT --to gguf``: a checkpoint as one GGUF model file llama.cpp loads, its
quantized layers in GGUF block types that hold them (``specs/gguf.md``); ``inspect`` and
``verify`` of such files.

OUT is a folder holding ``model.gguf`` (and incq's ``.incq-output.json``), written and
published exactly as the other conversions (``incq._tool.fs``): a locked partial folder beside
OUT, the file created new, fsynced, then an atomic no-replace rename. The container, its
metadata keys, the tensor names and the tokenizer are written with the ``gguf`` package
(``GGUFWriter``, ``get_tensor_name_map``, its vocabularies and ``SpecialVocab``); the metadata
follows llama.cpp's converter for the Llama family. Tensors are written one at a time: the
tensor table first (shapes and types, read from the headers and one pass over each layer's
codes to choose its type), then each tensor's data as it is made.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from incq._core import api as _api
from incq._core import formats
from incq._core.bridge import to_host
from incq._errors import IncqError
from incq._tool import checkpoint as ck
from incq._tool import fs

#: the file OUT holds
MODEL_FILE = "model.gguf"
#: Hugging Face architectures written as llama.cpp's "llama" (its converter's LlamaModel)
LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM")
#: tensors llama.cpp's converter leaves out (rotary tables it recomputes)
SKIPPED = (".rotary_emb.inv_freq",)
#: files the tokenizer is read from (confined to SRC before any is opened)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "config.json")
#: Q4_1's bound: |W - (q - z) s| <= |s| / 128 (m = -s z rounded to float16)
Q4_1_BOUND = 2.0 ** -7


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ck.CheckpointError("--to gguf needs the gguf package (pip install gguf==0.19.0)") from None
    return gguf


class Planned(NamedTuple):
    """One tensor of the GGUF file: its name, its GGML type's name, the NumPy shape of its data
    (bytes per row for block types), and where it comes from."""

    name: str
    ggml: str  # "Q4_0", "F16", "F32", "BF16", ...
    shape: tuple[int, ...]
    nbytes: int
    source: str  # a layer prefix or a tensor name
    layer: Any  # the ck.Layer, or None
    rows: tuple[int, int] | None  # (heads, head rows) of llama.cpp's q_proj / k_proj row order, or None


# --------------------------------------------------------------------------- the model's hyperparameters


def _model_config(ckpt) -> dict:
    path = ckpt.path / "config.json"
    if not path.is_file():
        raise ck.CheckpointError(f"{ckpt.path}: --to gguf needs config.json (the model's architecture)")
    config = ck._read_json(fs.confine(ckpt.path, "config.json", str(ckpt.path)))
    archs = config.get("architectures") if isinstance(config, dict) else None
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in LLAMA_FAMILY:
        raise ck.CheckpointError(f"{ckpt.path}: architecture {arch!r} is not written as GGUF (supported: "
                                 f"{', '.join(LLAMA_FAMILY)})")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ck.CheckpointError(f"{path}: {key} must be a positive integer, got {config.get(key)!r}")
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and (scaling.get("rope_type") or scaling.get("type")) not in (None, "linear",
                                                                                                "default"):
        raise ck.CheckpointError(f"{path}: rope_scaling {scaling.get('rope_type') or scaling.get('type')!r} is not "
                                 "written as GGUF (supported: none, linear)")
    return config


def _heads(config: dict) -> tuple[int, int, int]:
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return heads, kv, head_dim


def _row_order(name: str, config: dict, n: int) -> tuple[int, int] | None:
    """llama.cpp's converter permutes the rows (output features) of q_proj and k_proj (its
    ``LlamaModel.permute``): (heads, rows per head) for those, else None."""
    heads, kv, _ = _heads(config)
    for suffix, count in ((".self_attn.q_proj", heads), (".self_attn.k_proj", kv)):
        if name == suffix[1:] or name.endswith(suffix) or name.endswith(suffix + ".weight") or name.endswith(
                suffix + ".bias"):
            if n % (2 * count):
                raise ck.CheckpointError(f"{name}: {n} rows cannot be split into {count} heads of even size")
            return count, n // count
    return None


def permutation(rows: tuple[int, int]) -> np.ndarray:
    """Row i of llama.cpp's order is row ``perm[i]`` of the checkpoint's: within each head the
    two halves are interleaved (row h, j, i <- h, i, j for halves i and positions j)."""
    heads, per = rows
    return np.arange(heads * per).reshape(heads, 2, per // 2).swapaxes(1, 2).reshape(-1)


# --------------------------------------------------------------------------- the plan


def _layer_type(ckpt, layer, wanted: str | None) -> str:
    """The layer's GGUF block type: the smallest exact one, or ``wanted`` if it holds the layer;
    refused naming the layer."""
    qweight, scales, qzeros, g_idx = ck.layer_arrays(ckpt, layer)
    try:
        if wanted is None:
            return _api.exact_gguf_type(qweight, scales, qzeros, g_idx, **layer.kwargs)
        _api.to_gguf_blocks(qweight, scales, qzeros, g_idx, gguf_type=wanted, **layer.kwargs)  # its checks
    except IncqError as e:
        raise ck.CheckpointError(f"{layer.prefix}: {_reason(e)}") from None
    return wanted


def _reason(e: IncqError) -> str:
    text = str(e)
    if "g_idx must give every run" in text:
        return f"act-order or groups that split a 32-weight GGUF block cannot be held ({text})"
    return text


def plan(ckpt, layers, config: dict, wanted: str | None) -> list[Planned]:
    gguf = _gguf()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    by_tensor = {t: layer for layer in layers for t in layer.tensors.values()}
    out: list[Planned] = []
    done = set()
    for name, info in ckpt.tensors.items():
        layer = by_tensor.get(name)
        if layer is not None:
            if layer.prefix in done:
                continue
            done.add(layer.prefix)
            target = names.get_name(layer.prefix + ".weight", try_suffixes=(".weight",))
            if target is None:
                raise ck.CheckpointError(f"{layer.prefix}: no GGUF tensor name for it in llama.cpp's Llama map")
            kind = _layer_type(ckpt, layer, wanted)
            t = formats.GGUF_TYPES[kind]
            width = layer.k // formats.GGUF_BLOCK * t.block_bytes
            out.append(Planned(target, t.title, (layer.n, width), layer.n * width, layer.prefix, layer,
                               _row_order(layer.prefix, config, layer.n)))
            continue
        if name.endswith(SKIPPED):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ck.CheckpointError(f"{name}: no GGUF tensor name for it in llama.cpp's Llama map")
        if info.dtype not in ("F16", "F32", "BF16"):
            raise ck.CheckpointError(f"{name}: {info.dtype} tensors are not written as GGUF (F16, F32, BF16 are)")
        # 1-d tensors (norms, biases) as F32, as llama.cpp's converter writes them (exact)
        ggml = "F32" if len(info.shape) <= 1 else info.dtype
        size = int(np.prod(info.shape)) * (4 if ggml == "F32" else 2)
        rows = _row_order(name, config, info.shape[0]) if info.shape else None
        out.append(Planned(target, ggml, tuple(info.shape), size, name, None, rows))
    return out


def file_type(planned: list[Planned]) -> int:
    """llama.cpp's ``general.file_type``: the block type of most quantized weights."""
    gguf = _gguf()
    counts: dict[str, int] = {}
    for p in planned:
        if p.layer is not None:
            counts[p.ggml] = counts.get(p.ggml, 0) + p.nbytes
    if not counts:
        return int(gguf.LlamaFileType.MOSTLY_F16)
    return int(getattr(gguf.LlamaFileType, "MOSTLY_" + max(counts, key=counts.get)))


# --------------------------------------------------------------------------- data


def layer_blocks(ckpt, p: Planned) -> np.ndarray:
    qweight, scales, qzeros, g_idx = ck.layer_arrays(ckpt, p.layer)
    blocks = to_host(_api.to_gguf_blocks(qweight, scales, qzeros, g_idx, gguf_type=p.ggml.lower(),
                                         **p.layer.kwargs))
    if p.rows is not None:
        blocks = blocks[permutation(p.rows)]
    return np.ascontiguousarray(blocks)


def tensor_data(ckpt, p: Planned) -> np.ndarray:
    """A float tensor's data as written: F32 / F16 as NumPy arrays, BF16 as its bytes."""
    data = ck.read_tensor(ckpt, p.source)
    if p.ggml == "BF16":
        torch = ck.torch_or_none()
        array = data.contiguous().view(torch.int16).numpy().view(np.uint8).reshape(*data.shape[:-1], -1)
    else:
        array = to_host(data).astype(np.float32 if p.ggml == "F32" else np.float16)
    if p.rows is not None:
        array = array[permutation(p.rows)]
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------- metadata and tokenizer


def _confine_tokenizer(ckpt, follow_symlinks: bool) -> None:
    for rel in TOKENIZER_FILES:
        if os.path.lexists(ckpt.path / rel):
            fs.confine(ckpt.path, rel, str(ckpt.path), follow_symlinks)


def _vocab(ckpt, config: dict):
    """The tokenizer as one of the gguf package's vocabularies, or refused."""
    gguf = _gguf()
    path = ckpt.path
    if (path / "tokenizer.model").is_file():
        try:
            return gguf.vocab.SentencePieceVocab(path)
        except RuntimeError as e:  # sentencepiece missing
            raise ck.CheckpointError(f"{path / 'tokenizer.model'}: {e} (pip install sentencepiece)") from None
    if (path / "tokenizer.json").is_file():
        for kind in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab):
            try:
                return kind(path)
            except (FileNotFoundError, TypeError, ImportError, KeyError):
                continue
        model = ck._read_json(path / "tokenizer.json").get("model", {}).get("type")
        raise ck.CheckpointError(f"{path / 'tokenizer.json'}: a {model} tokenizer, which llama.cpp has no model for "
                                 "(it reads SentencePiece tokenizer.model and BPE tokenizer.json files)")
    raise ck.CheckpointError(f"{path}: no tokenizer (tokenizer.model or tokenizer.json), which a GGUF model file "
                             "holds")


def add_metadata(writer, ckpt, config: dict, planned: list[Planned]) -> int:
    """Architecture, file type and tokenizer keys; returns the token count."""
    gguf = _gguf()
    heads, kv, head_dim = _heads(config)
    writer.add_name(Path(str(config.get("_name_or_path") or ckpt.path.name)).name or ckpt.path.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
    writer.add_rope_freq_base(float(config.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and (scaling.get("rope_type") or scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type(planned))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab = _vocab(ckpt, config)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    if len(tokens) > config["vocab_size"]:
        raise ck.CheckpointError(f"{ckpt.path}: the tokenizer has {len(tokens)} tokens, more than the model's "
                                 f"vocab_size {config['vocab_size']}")
    for i in range(len(tokens), config["vocab_size"]):  # rows of the embedding no token names
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(ckpt.path, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return len(tokens)


# --------------------------------------------------------------------------- convert


def convert(src, dst, gguf_type: str | None, force: bool, quiet: bool, follow_symlinks: bool) -> int:
    gguf = _gguf()
    from incq._tool.cli import open_source

    src, dst, ckpt, layers = open_source(src, dst, force, follow_symlinks)
    config = _model_config(ckpt)
    _confine_tokenizer(ckpt, follow_symlinks)
    planned = plan(ckpt, layers, config, gguf_type)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_metadata(writer, ckpt, config, planned)
    for p in planned:
        raw = getattr(gguf.GGMLQuantizationType, p.ggml) if p.layer is not None or p.ggml == "BF16" else None
        dtype = np.uint8 if raw is not None else (np.float32 if p.ggml == "F32" else np.float16)
        shape = p.shape if p.ggml != "BF16" else (*p.shape[:-1], p.shape[-1] * 2)
        writer.add_tensor_info(p.name, shape, np.dtype(dtype), p.nbytes, raw_dtype=raw)
    fs.remove_stale_partials(dst.parent, lambda line: print(f"incq convert: {line}", file=sys.stderr))
    worst: dict[str, float] = {}
    with fs.signals_unwind(), fs.partial_directory(dst) as tmp:
        out = os.fdopen(fs.create(tmp, MODEL_FILE), "wb")
        try:
            # the file is created new (O_EXCL | O_NOFOLLOW) in the run's own folder, then handed
            # to the writer, which would otherwise open it itself
            writer.fout, writer.path = [out], tmp / MODEL_FILE
            writer.state = gguf.gguf_writer.WriterState.EMPTY
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for p in planned:
                data = layer_blocks(ckpt, p) if p.layer is not None else tensor_data(ckpt, p)
                if p.layer is not None and not formats.GGUF_TYPES[p.ggml.lower()].exact:
                    worst[p.source] = _added_error(ckpt, p, data)
                if data.nbytes != p.nbytes:
                    raise ck.CheckpointError(f"{p.name}: produced {data.nbytes} bytes, expected {p.nbytes}")
                # what GGUFWriter.write_tensor_data does, through Python's own write (a full disk
                # then raises the OSError that says so): align, the bytes, pad
                writer.write_padding(out, out.tell())
                out.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                writer.write_padding(out, data.nbytes)
                del data  # one tensor in memory at a time
            out.flush()
            os.fsync(out.fileno())
        finally:
            writer.fout = None
            out.close()
        fs.write_marker(tmp, src, f"incq convert --to {formats.GGUF}"
                        + (f" --gguf-type {gguf_type}" if gguf_type else ""))
        fs.publish(tmp, dst, src, force)
    counts: dict[str, int] = {}
    for p in planned:
        if p.layer is not None:
            counts[p.ggml] = counts.get(p.ggml, 0) + 1
    stream = sys.stderr if quiet else sys.stdout
    print(f"{dst / MODEL_FILE}: {len(layers)} layers as {', '.join(f'{c} {t}' for t, c in sorted(counts.items()))}"
          f" ({'exactly' if not worst else 'see below'}), {len(planned) - len(layers)} other tensors, "
          f"GGUF for llama.cpp", file=stream)
    if worst:
        print(f"  Q4_1 is not exact: m = -s * z is rounded to float16; the weights differ from the source's by up to "
              f"{max(worst.values()):.4g} of a quantization step (layer {max(worst, key=worst.get)}; bound "
              f"{Q4_1_BOUND:.4g})", file=stream)
    return 0


def _added_error(ckpt, p: Planned, blocks: np.ndarray) -> float:
    """The largest |GGUF weight - source weight| / |s| of a layer (Q4_1)."""
    exact, steps = exact_weights(ckpt, p.layer)
    got = _api.from_gguf_blocks(blocks, p.ggml.lower())
    if p.rows is not None:
        inverse = np.argsort(permutation(p.rows))
        got = got[:, inverse]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(steps > 0, np.abs(got - exact) / steps, 0.0)
    return float(ratio.max(initial=0.0))


def exact_weights(ckpt, layer) -> tuple[np.ndarray, np.ndarray]:
    """The source layer's weights W [K, N] as the exact float32 product (q - z) s, and |s| per
    weight."""
    qweight, scales, qzeros, g_idx = (to_host(a) if a is not None else None for a in ck.layer_arrays(ckpt, layer))
    scales = scales.astype(np.float32)
    w = _api.dequantize(qweight, scales, qzeros, g_idx, **layer.kwargs)
    logical = scales.T if formats.get(layer.kwargs["packing"]).transposed else scales
    g = layer.k if layer.kwargs["group_size"] == -1 else layer.kwargs["group_size"]
    grp = g_idx.astype(np.intp) if g_idx is not None else np.arange(layer.k) // g
    return w, np.abs(logical)[grp]


# --------------------------------------------------------------------------- reading GGUF files


def gguf_file(path) -> Path | None:
    """The GGUF file at ``path``: a ``.gguf`` file, or a folder holding ``model.gguf`` (incq's
    output); None when ``path`` is neither."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file() and not any((path / c).is_file() for c in ck.CONFIG_FILES):
        return path / MODEL_FILE
    return None


def _reader(path: Path):
    gguf = _gguf()
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError and others for files it cannot parse
        if isinstance(e, OSError):
            raise
        raise ck.CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # an unusual value type: report it as present
        return True


def describe(path: Path) -> dict:
    reader = _reader(path)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    arch = _field(reader, "general.architecture")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    return {
        "path": str(path), "format": "GGUF", "architecture": arch, "name": _field(reader, "general.name"),
        "file_type": _field(reader, "general.file_type"), "tensors": len(reader.tensors), "tensor_types": types,
        "block_count": _field(reader, f"{arch}.block_count"), "tokenizer": _field(reader, "tokenizer.ggml.model"),
        "tokens": len(tokens) if isinstance(tokens, list) else None, "metadata_keys": len(reader.fields),
    }


def inspect(path: Path, as_json: bool) -> int:
    report = describe(path)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['path']}: GGUF model file, architecture {report['architecture']}, name {report['name']!r}")
    print(f"  {report['tensors']} tensors: " + ", ".join(f"{c} {t}" for t, c in sorted(report["tensor_types"].items())))
    print(f"  {report['block_count']} blocks; tokenizer {report['tokenizer']} with {report['tokens']} tokens; "
          f"{report['metadata_keys']} metadata keys")
    return 0


def verify(path: Path, source, follow_symlinks: bool) -> int:
    """Every tensor of the GGUF file at ``path`` against the checkpoint ``source``: quantized
    layers by the gguf package's dequantization against incq's golden (exact product), equal for
    exact types and within the bound for Q4_1; other tensors by value; metadata and tokenizer
    present and matching the config."""
    gguf = _gguf()
    from gguf.quants import dequantize as gguf_dequantize

    reader = _reader(path)
    ckpt = ck.open_checkpoint(source, follow_symlinks)
    layers = ck.find_layers(ckpt)
    config = _model_config(ckpt)
    by_name = {t.name: t for t in reader.tensors}
    print(f"{path} against {ckpt.path}: every tensor; quantized layers by the gguf package's dequantization against "
          "incq's golden one (exact product (q - z) s), other tensors by value; metadata and tokenizer")
    from incq._tool.cli import _report, _summary

    bad = 0
    planned = _plan_names(ckpt, layers, config)
    for target, source_name, layer, rows, want in planned:
        t = by_name.pop(target, None)
        if t is None:
            bad += _report(target, f"missing in {path} (from {source_name})")
            continue
        if layer is not None:
            kind = t.tensor_type.name.lower()
            if kind not in formats.GGUF_TYPES:
                bad += _report(target, f"type {t.tensor_type.name}, not one of incq's block types")
                continue
            got = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(layer.n, layer.k).T
            exact, steps = exact_weights(ckpt, layer)
            if rows is not None:
                exact, steps = exact[:, permutation(rows)], steps[:, permutation(rows)]
            err = np.abs(got.astype(np.float64) - exact)
            if formats.GGUF_TYPES[kind].exact:
                problem = None if not err.any() else f"{int(np.count_nonzero(err))} of {err.size} weights differ"
                fine = f"{t.tensor_type.name}, K x N = {layer.k} x {layer.n}, identical weights"
            else:
                worst = float((err / np.where(steps > 0, steps, 1)).max())
                problem = None if worst <= Q4_1_BOUND else f"off by {worst:.4g} of a step (bound {Q4_1_BOUND:.4g})"
                fine = f"{t.tensor_type.name}, K x N = {layer.k} x {layer.n}, within {worst:.4g} of a step"
            bad += _report(f"{layer.prefix} -> {target}", problem, fine)
            continue
        data = to_host(ck.read_tensor(ckpt, source_name)).astype(np.float32)
        if rows is not None:
            data = data[permutation(rows)]
        got = gguf_dequantize(np.asarray(t.data), t.tensor_type) if t.tensor_type.name != "BF16" else (
            np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        got = np.asarray(got, np.float32).reshape(data.shape)
        if t.tensor_type.name != want:
            bad += _report(target, f"type {t.tensor_type.name}, expected {want}")
        elif not np.array_equal(got, data):
            bad += _report(target, f"{int(np.count_nonzero(got != data))} of {data.size} values differ")
    for extra in sorted(by_name):
        bad += _report(extra, f"in {path} only")
    bad += _check_metadata(reader, config, path)
    return _summary(bad, f"{len(layers)} layers, {len(planned) - len(layers)} other tensors and the metadata")


def _plan_names(ckpt, layers, config):
    """(GGUF name, source, layer or None, row order, expected type of a float tensor) for every
    tensor a conversion writes, without choosing block types."""
    gguf = _gguf()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    by_tensor = {t: layer for layer in layers for t in layer.tensors.values()}
    out, done = [], set()
    for name, info in ckpt.tensors.items():
        layer = by_tensor.get(name)
        if layer is not None:
            if layer.prefix not in done:
                done.add(layer.prefix)
                out.append((names.get_name(layer.prefix + ".weight", try_suffixes=(".weight",)), layer.prefix, layer,
                            _row_order(layer.prefix, config, layer.n), None))
            continue
        if name.endswith(SKIPPED):
            continue
        want = "F32" if len(info.shape) <= 1 else info.dtype
        out.append((names.get_name(name, try_suffixes=(".weight", ".bias")) or name, name, None,
                    _row_order(name, config, info.shape[0]) if info.shape else None, want))
    return out


def _check_metadata(reader, config: dict, path: Path) -> int:
    from incq._tool.cli import _report

    heads, kv, head_dim = _heads(config)
    expected = {
        "general.architecture": "llama", "llama.block_count": config["num_hidden_layers"],
        "llama.embedding_length": config["hidden_size"], "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv,
        "llama.rope.dimension_count": head_dim,
    }
    bad = 0
    for key, value in expected.items():
        got = _field(reader, key)
        bad += _report(key, None if got == value else f"{got!r}, the config says {value!r}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    model = _field(reader, "tokenizer.ggml.model")
    if not isinstance(tokens, list) or not model:
        bad += _report("tokenizer", f"missing in {path}")
    else:
        bad += _report("tokenizer", None if len(tokens) == config["vocab_size"] else
                       f"{len(tokens)} tokens, vocab_size {config['vocab_size']}",
                       f"{model}, {len(tokens)} tokens")
    return bad
