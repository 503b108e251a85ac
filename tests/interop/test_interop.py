"""Interop with the real serving runtimes: vLLM's CPU build and transformers + auto-round.

Opt-in (``INCQ_INTEROP=1``, see README.md and run.sh). For every AutoRound export of a tiny
random Llama (make_exports.py) it serves the original in transformers + auto-round and in vLLM,
converts it with ``incq convert SRC DST --for vllm`` (and ``--to gptq`` / ``--to awq``), serves
the conversions in vLLM and compares greedy tokens and logprobs: with the original served in
vLLM, else with transformers, and always with a float32 reference built from incq's own
dequantization of the original's tensors (teacher-forced on each runtime's tokens, so a runtime
that loads a checkpoint but reads its zero points wrong is caught).

A second test measures which configs each runtime loads (hand-edited configs over the same
tensors included) against the matrix recorded in specs/runtimes.md.

Each runtime is started once, in a subprocess of its own, and serves every checkpoint in turn
(vLLM in-process engine, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``); this file is also the worker:
``python test_interop.py vllm|hf JOBS.json RESULTS.jsonl``.

Environment: INCQ_INTEROP_WORK (a folder to keep exports and results in; default a pytest
temporary folder), INCQ_INTEROP_DTYPE (float16), INCQ_INTEROP_MATRIX=0 to skip the matrix,
INCQ_INTEROP_REUSE=1 to re-check the results a finished run left in INCQ_INTEROP_WORK.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROMPTS = [[1, 17, 42, 99, 7], [1, 200, 3, 64]]
MAX_TOKENS = 8
DTYPE = os.environ.get("INCQ_INTEROP_DTYPE", "float16")
# logprob tolerances: the same weights in vLLM before and after a conversion; two runtimes in
# float16; a runtime in float16 against the float32 reference
TOL_SAME = 0.01
TOL_RUNTIMES = 0.02
TOL_REFERENCE = 0.05


def _table(tables: list, work: Path, title: str, lines: list[str]) -> None:
    """A table for the end of the run (conftest.py prints them), also kept in WORK."""
    tables.append((title, lines))
    with open(work / "interop-tables.md", "a") as f:
        f.write(f"## {title}\n\n" + "\n".join(lines) + "\n\n")


# --------------------------------------------------------------------------- what is served

# incq convert's targets: --for vllm of every export, the --to forms of the 4-bit group-32 ones
CONVERSIONS = {"for_vllm": ["--for", "vllm"], "to_gptq": ["--to", "gptq"],
               "to_gptq_raw": ["--to", "gptq", "--zeros", "raw"], "to_awq": ["--to", "awq"],
               "to_ct": ["--to", "compressed-tensors"]}

# hand-edited configs over the tensors of an export: name -> (group dir, source kind, config
# changes (None deletes a key), what it shows)
EDITS = {
    "inc_awq_sym_false_z8": ("g32", "w4_sym_auto_round-auto_awq", {"sym": False},
                             "AutoRound AWQ packing, sym false, every zero point 8 (an AWQ output of a symmetric source)"),
    "inc_awq_sym_true_asym_data": ("g32", "w4_asym_auto_round", {"sym": True},
                                   "AutoRound AWQ packing labelled sym true over asymmetric zero points"),
    "inc_plain_auto_round_sym": ("g32", "w4_sym_auto_round-gptqmodel", {"packing_format": "auto_round"},
                                 "plain packing_format auto_round (raw zeros), 4-bit sym"),
    "inc_plain_auto_round_asym": ("g32", "w4_asym_auto_round-gptqmodel", {"packing_format": "auto_round"},
                                  "plain packing_format auto_round (raw zeros), 4-bit asym"),
    "inc_auto_gptq_sym_raw_zeros": ("g32", "w4_sym_auto_round-gptqmodel", {"packing_format": "auto_round:auto_gptq"},
                                    "auto_round:auto_gptq sym whose words are raw 0x88888888 (v2 data labelled v1)"),
    "gptq_v1_sym": ("g32", "w4_sym_auto_gptq", {"checkpoint_format": "gptq"},
                    "quant_method gptq, checkpoint_format gptq, sym true"),
    "gptq_v2_label_sym_v1_data": ("g32", "w4_sym_auto_gptq", {"checkpoint_format": "gptq_v2"},
                                  "checkpoint_format gptq_v2, sym true, v1 words 0x77777777"),
    "gptq_v1_asym": ("g32", "w4_asym_auto_gptq", {"checkpoint_format": "gptq"},
                     "checkpoint_format gptq, sym false"),
    "gptq_v2_asym": ("g32", "w4_asym_auto_gptq", {"checkpoint_format": "gptq_v2"},
                     "checkpoint_format gptq_v2, sym false (config only: v1 words)"),
    "gptq_sym_true_asym_data": ("g32", "w4_asym_auto_gptq", {"sym": True},
                                "quant_method gptq labelled sym true over asymmetric zero points"),
    "gptq_desc_act": ("g32", "w4_sym_auto_gptq", {"desc_act": True, "checkpoint_format": "gptq"},
                      "desc_act true (no g_idx tensor)"),
    "awq_zero_point_false_asym_data": ("g32", "w4_asym_auto_awq", {"zero_point": False},
                                       "quant_method awq, zero_point false over asymmetric zero points"),
    "awq_zero_point_true_z8": ("g32", "w4_sym_auto_awq", {"zero_point": True},
                               "quant_method awq, zero_point true, every zero point 8"),
}
# other group sizes (folder -> group size), exported for GROUP_KINDS only
GROUPS = {"g16": 16, "g64": 64, "g128": 128, "gm1": -1}
GROUP_KINDS = ["w4_sym_auto_round", "w4_asym_auto_round", "w4_sym_auto_gptq", "w4_asym_auto_awq"]
OTHER_DTYPE = "bfloat16"  # also served in this dtype: the g32 GROUP_KINDS


def _work(tmp_path_factory) -> Path:
    given = os.environ.get("INCQ_INTEROP_WORK")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given).resolve()
    return tmp_path_factory.mktemp("interop")


def _edit_config(src: Path, dst: Path, changes: dict) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for name in ("config.json", "quantization_config.json", "quantize_config.json"):
        path = dst / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        qc = data["quantization_config"] if name == "config.json" else data
        for key, value in changes.items():
            if value is None:
                qc.pop(key, None)
            else:
                qc[key] = value
        path.write_text(json.dumps(data, indent=2) + "\n")


def _quant_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())["quantization_config"]


def describe(path: Path) -> str:
    qc = _quant_config(path)
    method = qc.get("quant_method")
    if method == "auto-round":
        return f"auto-round {qc.get('packing_format')} sym={qc.get('sym')}"
    if method == "gptq":
        return f"gptq {qc.get('checkpoint_format', '(no checkpoint_format)')} sym={qc.get('sym')}"
    if method == "awq":
        return f"awq {qc.get('version')} zero_point={qc.get('zero_point')}"
    if method == "compressed-tensors":
        w = [g.get("weights") or {} for g in (qc.get("config_groups") or {}).values()]
        return f"compressed-tensors {qc.get('format')} " + ", ".join(
            f"{x.get('num_bits')}-bit symmetric={x.get('symmetric')} group={x.get('group_size')}" for x in w)
    return str(method)


def incq_convert(src: Path, dst: Path, args: list[str]) -> dict:
    if dst.exists():
        shutil.rmtree(dst)
    proc = subprocess.run([sys.executable, "-m", "incq", "convert", str(src), str(dst), *args, "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    return {"args": args, "rc": proc.returncode, "stderr": proc.stderr.strip(), "ok": proc.returncode == 0}


# --------------------------------------------------------------------------- workers


def _run_worker(kind: str, jobs: list[dict], work: Path, timeout: float = 1200) -> dict[str, dict]:
    """Serve ``jobs`` in one ``kind`` worker process; a worker that dies is restarted after the
    job it died on (recorded as a crash)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    results: dict[str, dict] = {}
    pending = list(jobs)
    attempt = 0
    while pending:
        attempt += 1
        jobs_file, out_file = work / f"{kind}-jobs-{attempt}.json", work / f"{kind}-results-{attempt}.jsonl"
        log = work / f"{kind}-worker-{attempt}.log"
        jobs_file.write_text(json.dumps(pending))
        out_file.unlink(missing_ok=True)
        with open(log, "w") as logf:
            proc = subprocess.run([sys.executable, __file__, kind, str(jobs_file), str(out_file)], env=env,
                                  stdout=logf, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
        done = [json.loads(line) for line in out_file.read_text().splitlines()] if out_file.exists() else []
        for item in done:
            results[item["id"]] = item
        pending = [job for job in pending if job["id"] not in results]
        if pending:
            tail = log.read_text()[-600:].strip().splitlines()[-1:] or [""]
            results[pending[0]["id"]] = {"id": pending[0]["id"], "loaded": False, "forward": False,
                                         "error": f"worker died (rc {proc.returncode}): {tail[0]}"}
            pending = pending[1:]
    return results


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    # pydantic wraps vLLM's config errors; keep the message
    if "Value error, " in text:
        text = text.split("Value error, ", 1)[1].split(" [type=value_error", 1)[0]
    return " ".join(text.split())


def _worker_vllm(job: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    res: dict = {"loaded": False, "forward": False}
    t0 = time.time()
    try:
        llm = LLM(model=job["path"], dtype=job["dtype"], max_model_len=64, enforce_eager=True, seed=0)
    except Exception as exc:
        res["error"] = _short_error(exc)
        return res
    res["loaded"], res["load_s"] = True, round(time.time() - t0, 1)
    try:
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS],
                            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1), use_tqdm=False)
        res["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        res["logprobs"] = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
                           for o in outs]
        res["forward"] = True
    except Exception as exc:
        res["error"] = _short_error(exc)
    del llm
    return res


def _worker_hf(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    res: dict = {"loaded": False, "forward": False}
    try:
        model = AutoModelForCausalLM.from_pretrained(job["path"], dtype=getattr(torch, job["dtype"]),
                                                     device_map="cpu")
    except Exception as exc:
        res["error"] = _short_error(exc)
        return res
    res["loaded"] = True
    res["linear"] = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in model.modules()
                            if "Linear" in type(m).__name__ and not isinstance(m, torch.nn.Linear)})
    try:
        res["tokens"], res["logprobs"] = [], []
        for prompt in PROMPTS:
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                     output_scores=True, return_dict_in_generate=True, pad_token_id=2)
            new = out.sequences[0, len(prompt):].tolist()
            res["tokens"].append(new)
            res["logprobs"].append([torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new)])
        res["forward"] = True
    except Exception as exc:
        res["error"] = _short_error(exc)
    return res


def worker_main(kind: str, jobs_file: str, out_file: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    serve = {"vllm": _worker_vllm, "hf": _worker_hf}[kind]
    for job in json.loads(Path(jobs_file).read_text()):
        t0 = time.time()
        res = serve(job)
        res.update(id=job["id"], seconds=round(time.time() - t0, 1))
        with open(out_file, "a") as f:
            f.write(json.dumps(res) + "\n")
        print("served", job["id"], res.get("error", "ok"), flush=True)
    sys.stdout.flush()
    os._exit(0)  # vLLM's engine threads would keep an ordinary exit waiting


# --------------------------------------------------------------------------- the reference


class Reference:
    """float32 Llama whose linear layers are incq's dequantization of a checkpoint's tensors."""

    def __init__(self, path: Path):
        import glob

        import torch
        from safetensors.torch import load_file
        from transformers import LlamaConfig, LlamaForCausalLM

        import incq

        cfg = json.loads((path / "config.json").read_text())
        qc = cfg.pop("quantization_config")
        tensors = {}
        for f in sorted(glob.glob(str(path / "*.safetensors"))):
            tensors.update(load_file(f))
        model = LlamaForCausalLM(LlamaConfig.from_dict(cfg)).float().eval()
        state = {}
        for name, t in tensors.items():
            if name.endswith(".qweight"):
                prefix = name[: -len(".qweight")]
                kw = incq.config_kwargs(qc, layer=prefix)
                W = incq.dequantize(t, tensors[f"{prefix}.scales"], tensors.get(f"{prefix}.qzeros"),
                                    tensors.get(f"{prefix}.g_idx"), **kw)
                state[f"{prefix}.weight"] = W.float().t().contiguous()
            elif not name.endswith((".qzeros", ".scales", ".g_idx")):
                state[name] = t.float()
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
        self.model, self.torch = model, torch

    def logprobs(self, prompt: list[int], continuation: list[int]) -> list[float]:
        torch = self.torch
        ids = torch.tensor([prompt + continuation])
        with torch.no_grad():
            logp = torch.log_softmax(self.model(ids).logits[0].double(), -1)
        return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(continuation)]

    def greedy(self, prompt: list[int]) -> list[int]:
        seq = list(prompt)
        for _ in range(MAX_TOKENS):
            with self.torch.no_grad():
                seq.append(int(self.model(self.torch.tensor([seq])).logits[0, -1].argmax()))
        return seq[len(prompt):]


def vs_reference(ref: Reference, res: dict) -> tuple[bool, float]:
    """(greedy tokens equal to the reference's, max |logprob - reference logprob| on the
    runtime's own tokens)."""
    equal = all(ref.greedy(p) == t for p, t in zip(PROMPTS, res["tokens"]))
    diff = max(abs(a - b) for p, t, lps in zip(PROMPTS, res["tokens"], res["logprobs"])
               for a, b in zip(ref.logprobs(p, t), lps))
    return equal, diff


def compare(a: dict, b: dict) -> tuple[bool, float | None]:
    """(tokens equal, max |logprob diff| over the common prefix of each prompt's tokens)."""
    equal = a["tokens"] == b["tokens"]
    diffs = []
    for ta, tb, la, lb in zip(a["tokens"], b["tokens"], a["logprobs"], b["logprobs"]):
        for x, y, u, v in zip(ta, tb, la, lb):
            diffs.append(abs(u - v))
            if x != y:
                break
    return equal, max(diffs) if diffs else None


# --------------------------------------------------------------------------- the session


@pytest.fixture(scope="session")
def interop(tmp_path_factory):
    sys.path.insert(0, str(HERE))
    import make_exports

    work = _work(tmp_path_factory)
    saved = work / "interop-results.json"
    if os.environ.get("INCQ_INTEROP_REUSE") == "1" and saved.is_file():  # re-check a finished run's results
        result = json.loads(saved.read_text())
        for s in result["served"].values():
            s["path"], s["source"] = Path(s["path"]), Path(s["source"])
        return {"work": work, **result}
    (work / "interop-tables.md").unlink(missing_ok=True)
    t0 = time.time()
    timings = {}
    exports = {"g32": make_exports.make_exports(work / "g32", group_size=32)}
    for gdir, g in GROUPS.items():
        exports[gdir] = make_exports.make_exports(work / gdir, GROUP_KINDS, group_size=g)
    timings["exports"] = time.time() - t0

    # what is served: id -> {path, dtype, source (the export whose tensors are the truth)}
    served: dict[str, dict] = {}
    for gdir, report in exports.items():
        for kind, item in report.items():
            if gdir != "g32" and kind not in GROUP_KINDS or item.get("refused"):
                continue
            path = work / gdir / kind
            served[f"{gdir}/{kind}"] = {"path": path, "dtype": DTYPE, "source": path}
            if gdir == "g32" and kind in GROUP_KINDS:
                served[f"{gdir}/{kind}@{OTHER_DTYPE}"] = {"path": path, "dtype": OTHER_DTYPE, "source": path}

    t0 = time.time()
    conversions: dict[str, dict] = {}
    conv_dir = work / "converted"
    conv_dir.mkdir(exist_ok=True)
    for gdir, report in exports.items():
        for kind, item in report.items():
            if item.get("refused") or gdir != "g32" and kind not in GROUP_KINDS:
                continue
            label = kind if gdir == "g32" else f"{gdir}/{kind}"
            for target, args in CONVERSIONS.items():
                # the --to forms of the 4-bit g32 exports; --for vllm of every export
                if target != "for_vllm" and (item["bits"] != 4 or gdir != "g32"):
                    continue
                dst = conv_dir / f"{label.replace('/', '-')}.{target}"
                conversions[f"{label}.{target}"] = result = incq_convert(work / gdir / kind, dst, args)
                if result["ok"]:
                    result["target"] = describe(dst)
                    served[f"converted/{label}.{target}"] = {"path": dst, "dtype": DTYPE, "source": work / gdir / kind}
    timings["conversions"] = time.time() - t0

    edit_dir = work / "edited"
    edit_dir.mkdir(exist_ok=True)
    for name, (gdir, kind, changes, _) in EDITS.items():
        src = work / gdir / kind
        if not src.is_dir():
            continue
        _edit_config(src, edit_dir / name, changes)
        served[f"edited/{name}"] = {"path": edit_dir / name, "dtype": DTYPE, "source": src}

    jobs = [{"id": i, "path": str(s["path"]), "dtype": s["dtype"]} for i, s in served.items()]
    hf_jobs = [j for j in jobs if not j["id"].startswith("converted/") or j["id"].endswith(".for_vllm")]
    t0 = time.time()
    vllm = _run_worker("vllm", jobs, work)
    timings["vllm"] = time.time() - t0
    t0 = time.time()
    hf = _run_worker("hf", hf_jobs, work)
    timings["transformers"] = time.time() - t0

    t0 = time.time()
    refs: dict[Path, Reference] = {}
    for i, s in served.items():
        ref = refs.get(s["source"])
        if ref is None:
            ref = refs[s["source"]] = Reference(s["source"])
        for runtime in (vllm, hf):
            res = runtime.get(i)
            if res and res.get("forward"):
                res["ref_tokens_equal"], res["ref_diff"] = vs_reference(ref, res)
    timings["reference"] = time.time() - t0
    result = {"exports": exports, "served": served, "conversions": conversions, "vllm": vllm, "hf": hf,
              "timings": timings}
    (work / "interop-results.json").write_text(json.dumps(result, indent=1, default=str))
    return {"work": work, **result}


def _state(res: dict | None, detail: bool = False) -> str:
    """ok / wrong (runs, outputs off the reference) / forward fails / refused (at load)."""
    if res is None:
        return "-"
    err = f": {res.get('error', '')}" if detail else ""
    if not res.get("loaded"):
        return "refused" + err
    if not res.get("forward"):
        return "forward fails" + err
    if "ref_diff" not in res:
        return "runs (no reference)"
    return "ok" if res["ref_diff"] <= TOL_REFERENCE else f"wrong (max |logprob - reference| {res['ref_diff']:.2f})"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


# --------------------------------------------------------------------------- the tests


def test_convert_for_vllm_serves_the_same_model(interop, interop_tables):
    """Every AutoRound export: original in vLLM and transformers; `--for vllm` and `--to`
    conversions in vLLM; greedy tokens and logprobs compared."""
    vllm, hf, conversions = interop["vllm"], interop["hf"], interop["conversions"]
    rows, failures = [], []
    header = ("| kind | original in vLLM | original in transformers | conversion | converted target | "
              "converted in vLLM | tokens equal | max abs logprob diff | vs reference | converted in transformers |")
    labels = [(kind if gdir == "g32" else f"{gdir}/{kind}", gdir, kind, item)
              for gdir, report in interop["exports"].items() for kind, item in report.items()
              if gdir == "g32" or kind in GROUP_KINDS]
    for kind, gdir, _, item in sorted(labels, key=lambda x: (x[1] != "g32", x[0])):
        if item.get("refused"):
            rows.append(f"| {kind} | (AutoRound refused: {item['refused'][:80]}) | | | | | | | | |")
            continue
        orig_v, orig_h = vllm.get(f"{gdir}/{kind.split('/')[-1]}"), hf.get(f"{gdir}/{kind.split('/')[-1]}")
        base_name, base = ("vLLM", orig_v) if orig_v and orig_v.get("forward") else \
            ("transformers", orig_h) if orig_h and orig_h.get("forward") else ("reference", None)
        for target in CONVERSIONS:
            conv = conversions.get(f"{kind}.{target}")
            if conv is None:
                continue
            if not conv["ok"]:
                rows.append(f"| {kind} | {_state(orig_v)} | {_state(orig_h)} | {' '.join(conv['args'])} | "
                            f"refused: {conv['stderr'][:200]} | - | - | - | - | - |")
                if target == "for_vllm":
                    lines = conv["stderr"].splitlines()
                    if len(lines) != 1 or conv["rc"] != 1 or "Traceback" in conv["stderr"]:
                        failures.append(f"{kind}: --for vllm refusal is not a one-line error: {conv}")
                    if orig_v and orig_v.get("forward") and _state(orig_v) == "ok":
                        failures.append(f"{kind}: --for vllm refused a checkpoint vLLM serves as it is")
                continue
            res = vllm.get(f"converted/{kind}.{target}")
            equal, diff = (compare(res, base) if base and res and res.get("forward") else (None, None))
            if base is None and res and res.get("forward"):
                equal, diff = res["ref_tokens_equal"], res["ref_diff"]
            ref = _fmt(res.get("ref_diff")) if res else "-"
            rows.append(f"| {kind} | {_state(orig_v)} | {_state(orig_h)} | {' '.join(conv['args'])} | "
                        f"{conv['target']} | {_state(res)} | {equal} (vs {base_name}) | {_fmt(diff)} | {ref} | "
                        f"{_state(hf.get(f'converted/{kind}.{target}'))} |")
            if target == "for_vllm":
                tol = TOL_SAME if base_name == "vLLM" else TOL_RUNTIMES if base_name == "transformers" \
                    else TOL_REFERENCE
                if _state(res) != "ok":
                    failures.append(f"{kind}: --for vllm output not served correctly by vLLM: {res}")
                # against the float32 reference (no runtime serves the original) a greedy token may
                # flip at a near tie of float16 activations; the reference's logprobs of the
                # runtime's own tokens (teacher-forced) are what shows the weights are right
                elif (not equal and base_name != "reference") or diff > tol:
                    failures.append(f"{kind}: --for vllm output differs from the original in {base_name}: "
                                    f"tokens equal {equal}, max |logprob diff| {diff:.4f} > {tol}")
    _table(interop_tables, interop["work"], f"incq convert --for vllm / --to, served in vLLM CPU (dtype {DTYPE})",
           [header, "|" + "---|" * 10, *rows])
    assert not failures, "\n".join(failures)


# The measured matrix (specs/runtimes.md), in the environment run.sh makes (no auto-round-lib):
# id -> (vLLM CPU, transformers + auto-round), each "ok", "wrong" (loads and runs, outputs off
# the reference) or "refused: <text in the error>" / "forward fails: <text in the error>".
EXPECTED = {
    "edited/awq_zero_point_false_asym_data": ("wrong",
        "refused: requires gptqmodel"),
    "edited/awq_zero_point_true_z8": ("ok",
        "refused: requires gptqmodel"),
    "edited/gptq_desc_act": ("refused: desc_act=True) is no longer supported",
        "refused: requires optimum"),
    "edited/gptq_sym_true_asym_data": ("wrong",
        "refused: requires optimum"),
    "edited/gptq_v1_asym": ("refused: Unsupported quantization config: bits=4, sym=False",
        "refused: requires optimum"),
    "edited/gptq_v1_sym": ("ok",
        "refused: requires optimum"),
    "edited/gptq_v2_asym": ("refused: Unsupported quantization config: bits=4, sym=False",
        "refused: requires optimum"),
    "edited/gptq_v2_label_sym_v1_data": ("ok",
        "refused: requires optimum"),
    "edited/inc_auto_gptq_sym_raw_zeros": ("ok",
        "wrong"),
    "edited/inc_awq_sym_false_z8": ("ok",
        "forward fails: 'NoneType' and 'str'"),
    "edited/inc_awq_sym_true_asym_data": ("forward fails: no attribute 'awq_gemm'",
        "forward fails: 'NoneType' and 'str'"),
    "edited/inc_plain_auto_round_asym": ("refused: Unsupported packing_format: auto_round,",
        "ok"),
    "edited/inc_plain_auto_round_sym": ("refused: Unsupported packing_format: auto_round,",
        "ok"),
    "g128/w4_asym_auto_round": ("ok",
        "forward fails: 'NoneType' and 'str'"),
    "g128/w4_sym_auto_round": ("ok",
        "ok"),
    "g16/w4_asym_auto_round": ("forward fails: no attribute 'awq_gemm'",
        "forward fails: 'NoneType' and 'str'"),
    "g16/w4_sym_auto_round": ("refused: Only 4-bit and 8-bit symmetric quantization is supported with Marlin kernels",
        "ok"),
    "g32/w3_asym_auto_round": ("refused: Unsupported packing_format: auto_round,",
        "ok"),
    "g32/w4_asym_auto_awq": ("ok",
        "refused: requires gptqmodel"),
    "g32/w4_asym_auto_gptq": ("refused: Unsupported quantization config: bits=4, sym=False",
        "refused: requires optimum"),
    "g32/w4_asym_auto_round": ("ok",
        "forward fails: 'NoneType' and 'str'"),
    "g32/w4_asym_auto_round-auto_gptq": ("refused: INC on CPU: unsupported config INCLayerConfig(bits=4, group_size=32, sym=False",
        "forward fails: 'NoneType' and 'str'"),
    "g32/w4_asym_auto_round-gptqmodel": ("refused: Unsupported packing_format: auto_round:gptqmodel",
        "ok"),
    "g32/w4_asym_auto_round@bfloat16": ("ok",
        "forward fails: 'NoneType' and 'str'"),
    "g32/w4_sym_auto_awq": ("ok",
        "refused: requires gptqmodel"),
    "g32/w4_sym_auto_gptq": ("ok",
        "refused: requires optimum"),
    "g32/w4_sym_auto_round": ("ok",
        "ok"),
    "g32/w4_sym_auto_round-auto_awq": ("forward fails: no attribute 'awq_gemm'",
        "forward fails: 'NoneType' and 'str'"),
    "g32/w4_sym_auto_round-gptqmodel": ("refused: Unsupported packing_format: auto_round:gptqmodel",
        "ok"),
    "g32/w4_sym_auto_round@bfloat16": ("ok",
        "ok"),
    "g32/w8_sym_auto_gptq": ("refused: Marlin does not support weight_bits = uint8b128",
        "refused: requires optimum"),
    "g32/w8_sym_auto_round": ("refused: INC on CPU: unsupported config INCLayerConfig(bits=8",
        "ok"),
    "g64/w4_asym_auto_round": ("ok",
        "forward fails: 'NoneType' and 'str'"),
    "g64/w4_sym_auto_round": ("ok",
        "ok"),
    "gm1/w4_asym_auto_round": ("ok",
        "forward fails: 'NoneType' and 'str'"),
    "gm1/w4_sym_auto_round": ("ok",
        "ok"),
    "g128/w4_asym_auto_awq": ("ok", "refused: requires gptqmodel"),
    "g128/w4_sym_auto_gptq": ("ok", "refused: requires optimum"),
    "g16/w4_asym_auto_awq": ("ok", "refused: requires gptqmodel"),
    "g16/w4_sym_auto_gptq": ("refused: Marlin does not support group_size = 16", "refused: requires optimum"),
    "g32/w4_asym_auto_awq@bfloat16": ("ok", "refused: requires gptqmodel"),
    "g32/w4_sym_auto_gptq@bfloat16": ("ok", "refused: requires optimum"),
    "g64/w4_asym_auto_awq": ("ok", "refused: requires gptqmodel"),
    "g64/w4_sym_auto_gptq": ("ok", "refused: requires optimum"),
    "gm1/w4_asym_auto_awq": ("ok", "refused: requires gptqmodel"),
    "gm1/w4_sym_auto_gptq": ("ok", "refused: requires optimum"),
}


def _matches(expect: str, res: dict | None) -> bool:
    state = _state(res)
    if ":" in expect and expect.split(":", 1)[0] in ("refused", "forward fails"):
        category, text = (part.strip() for part in expect.split(":", 1))
        return state == category and text in (res or {}).get("error", "")
    return state.split(" ", 1)[0] == expect


@pytest.mark.skipif(os.environ.get("INCQ_INTEROP_MATRIX") == "0", reason="INCQ_INTEROP_MATRIX=0")
def test_runtime_matrix(interop, interop_tables):
    """Which configs vLLM's CPU build and transformers + auto-round load and serve correctly."""
    import importlib.util

    rows, mismatches, measured = [], [], {}
    for i, s in sorted(interop["served"].items()):
        if i.startswith("converted/"):
            continue
        v, h = interop["vllm"].get(i), interop["hf"].get(i)
        note = EDITS[i.split("/", 1)[1]][3] if i.startswith("edited/") else ""
        cells = [_state(res, detail=True) for res in (v, h)]
        measured[i] = cells
        rows.append(f"| {i} ({s['dtype']}) | {describe(s['path'])} | {cells[0]} | {cells[1]} | {note} |")
        want = EXPECTED.get(i)
        if want is None:
            mismatches.append(f"{i}: not in EXPECTED (measured {cells})")
            continue
        for runtime, expect, res in zip(("vLLM", "transformers"), want, (v, h)):
            if not _matches(expect, res):
                mismatches.append(f"{i} in {runtime}: expected {expect!r}, got {_state(res, detail=True)!r}")
    (interop["work"] / "interop-matrix.json").write_text(json.dumps(measured, indent=1, sort_keys=True))
    _table(interop_tables, interop["work"], "runtime matrix (vLLM CPU 0.32 | transformers + auto-round)",
           ["| checkpoint | config | vLLM CPU | transformers + auto-round | what it is |", "|---|---|---|---|---|", *rows])
    t = interop["timings"]
    _table(interop_tables, interop["work"], "interop timings (s)", [", ".join(f"{k} {v:.0f}" for k, v in t.items())])
    if importlib.util.find_spec("auto_round_kernel") is not None:
        pytest.skip("auto-round-lib (auto_round_kernel) is installed: both runtimes pick other kernels than the "
                    "recorded matrix; table printed, not checked")
    assert not mismatches, "\n".join(mismatches)


if __name__ == "__main__":
    worker_main(*sys.argv[1:4])
