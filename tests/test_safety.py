"""Data safety of the checkpoint tool: every path stays inside SRC, SRC is only read, DST is
published atomically and never replaces what appeared meanwhile, ``--force`` replaces only
incq's own output, partial output never outlives its run. Each test fails without its guard."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

import incq._tool.cli
import incq._tool.fs as fs
from checkpoints import fails, fingerprint, no_leftovers, ok, run

# --------------------------------------------------------------------------- an audit of opens

_AUDIT = {"root": None, "writes": []}


def _audit(event, args):
    root = _AUDIT["root"]
    if root is None or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    path = os.fsdecode(path)
    writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
        flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
    if writing and os.path.realpath(path).startswith(root):
        _AUDIT["writes"].append(path)


sys.addaudithook(_audit)


@pytest.mark.parametrize("fmt", ["auto_round:auto_awq", "gptq"])
def test_src_is_only_ever_opened_for_reading(example, tmp_path, fmt):
    src = example(fmt)
    (src / "sub").mkdir()
    (src / "sub" / "tokenizer.json").write_text("{}")
    before = fingerprint(src)
    _AUDIT.update(root=str(src.resolve()), writes=[])
    try:
        ok("inspect", src)
        ok("convert", src, tmp_path / "out", "--to", "awq" if fmt == "gptq" else "gptq", "--zeros" if fmt != "gptq"
           else "--quiet", *(["raw"] if fmt != "gptq" else []))
        ok("verify", tmp_path / "out", "--against", src)
    finally:
        _AUDIT["root"] = None
    assert _AUDIT["writes"] == [] and fingerprint(src) == before
    assert (tmp_path / "out" / "sub" / "tokenizer.json").read_text() == "{}"


# --------------------------------------------------------------------------- confinement


def _sharded(example, tmp_path):
    src = example("gptq", shards=2)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    return src, index


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_index_entries_outside_src_are_refused_and_the_file_is_untouched(example, tmp_path, kind):
    src, index = _sharded(example, tmp_path)
    first = sorted(set(index["weight_map"].values()))[0]
    victim = tmp_path / "victim.safetensors"
    shutil.move(src / first, victim)  # a valid shard, outside SRC
    before = victim.read_bytes()
    entry = str(victim) if kind == "absolute" else "../victim.safetensors"
    index["weight_map"] = {k: (entry if v == first else v) for k, v in index["weight_map"].items()}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    for command in (["inspect", src], ["verify", src], ["convert", src, tmp_path / "out", "--to", "awq"]):
        fails(*command, match=f"file entry {entry!r} leaves the checkpoint directory")
    assert victim.read_bytes() == before and not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_output_files_are_created_new_and_inside_the_output_only(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "existing").write_text("keep")
    for rel in ["/etc/passwd-incq-test", "../escape", "existing"]:
        with pytest.raises((fs.CheckpointError, FileExistsError)):
            os.close(fs.create(tmp_path / "out", rel))
    assert (tmp_path / "out" / "existing").read_text() == "keep" and not (tmp_path / "escape").exists()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        fs.create(tmp_path / "out", "link")
    assert not (tmp_path / "target").exists()


def test_symlinked_shard_outside_src_is_refused_unless_followed(example, tmp_path):
    src = example("auto_round:auto_awq", shards=1)
    outside = tmp_path / "blobs"
    outside.mkdir()
    shutil.move(src / "model.safetensors", outside / "abc123")
    (src / "model.safetensors").symlink_to(outside / "abc123")
    fails("convert", src, tmp_path / "out", "--to", "gptq", match="outside the checkpoint directory")
    fails("inspect", src, match="pass --follow-symlinks")
    ok("convert", src, tmp_path / "out", "--to", "gptq", "--follow-symlinks")
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "model.safetensors").is_symlink()


def test_symlink_loops_and_links_to_outside_folders_are_refused(example, tmp_path):
    src = example("gptq", shards=1)
    (src / "loop").symlink_to(src / "loop")
    fails("convert", src, tmp_path / "a", "--to", "awq", match="loop is part of a symlink loop")
    (src / "loop").unlink()
    big = tmp_path / "big"
    big.mkdir()
    (big / "huge.bin").write_bytes(b"\0" * 1000)
    (src / "data").symlink_to(big)
    fails("convert", src, tmp_path / "b", "--to", "awq", match="data is a symlink to")
    fails("convert", src, tmp_path / "b", "--to", "awq", "--follow-symlinks", match="data is a symlink to")
    (src / "data").unlink()
    (src / "dangling").symlink_to(tmp_path / "nothing")
    fails("convert", src, tmp_path / "c", "--to", "awq", match="dangling is a dangling symlink")
    assert not any((tmp_path / x).exists() for x in "abc") and no_leftovers(tmp_path)


def test_symlinks_inside_src_are_recreated_not_walked(example, tmp_path):
    src = example("gptq", shards=1)
    (src / "docs").mkdir()
    (src / "docs" / "README.md").write_text("hello")
    (src / "again").symlink_to("docs")  # a folder symlink inside SRC, and a loop back to SRC
    (src / "docs" / "up").symlink_to("..")
    ok("convert", src, tmp_path / "out", "--to", "awq")
    out = tmp_path / "out"
    assert (out / "again").is_symlink() and os.readlink(out / "again") == "docs"
    assert (out / "docs" / "up").is_symlink() and (out / "again" / "README.md").read_text() == "hello"


def test_special_files_in_src_are_refused(example, tmp_path):
    src = example("gptq", shards=1)
    os.mkfifo(src / "pipe")
    fails("convert", src, tmp_path / "out", "--to", "awq", match="pipe is not a regular file")


def test_duplicate_tensors_across_unindexed_shards_are_refused(example, tmp_path):
    src = example("gptq", shards=1)
    shutil.copy(src / "model.safetensors", src / "model-copy.safetensors")
    fails("convert", src, tmp_path / "out", "--to", "awq", match="is in both")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weight_map, match", [
    ([1, 2], "no weight_map"),
    ({"model.embed_tokens.weight": 3}, "must be a file name"),
    ({"model.embed_tokens.weight": ""}, "is not a file name"),
])
def test_malformed_weight_maps_get_one_line(example, weight_map, match):
    src = example("gptq", shards=2)
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fails("inspect", src, match=match)


def test_deeply_nested_json_gets_one_line(example):
    src = example("gptq", shards=1)
    (src / "config.json").write_text("[" * 100000 + "]" * 100000)
    (src / "quantization_config.json").write_text("{" + '"a":' * 1 + "[" * 100000 + "]" * 100000 + "}")
    fails("inspect", src, match="nested too deeply")


# --------------------------------------------------------------------------- publishing


def _during_conversion(monkeypatch, action):
    """Run ``action()`` while the conversion writes its tensors."""
    original = incq._tool.cli._convert_all

    def hooked(*args, **kwargs):
        original(*args, **kwargs)
        action()

    monkeypatch.setattr(incq._tool.cli, "_convert_all", hooked)


@pytest.mark.parametrize("content", [True, False])
def test_a_destination_that_appears_meanwhile_is_never_replaced(example, tmp_path, monkeypatch, content):
    src = example("awq", shards=1)
    dst = tmp_path / "dst"

    def appear():
        dst.mkdir()
        if content:
            (dst / "theirs.txt").write_text("theirs")

    _during_conversion(monkeypatch, appear)
    fails("convert", src, dst, "--to", "gptq", match="appeared while converting")
    assert sorted(p.name for p in dst.iterdir()) == (["theirs.txt"] if content else [])
    assert no_leftovers(tmp_path)


def test_of_two_converts_to_one_destination_one_wins(example, tmp_path, monkeypatch):
    src = example("awq", shards=1)
    dst = tmp_path / "dst"
    inner = []
    original = incq._tool.cli._convert_all

    def second_run_finishes_first(*args, **kwargs):
        original(*args, **kwargs)
        if not inner:
            inner.append(None)
            inner[0] = run("convert", src, dst, "--to", "gptq", "--zeros", "raw")

    monkeypatch.setattr(incq._tool.cli, "_convert_all", second_run_finishes_first)
    fails("convert", src, dst, "--to", "gptq", match="appeared while converting")
    assert inner[0].returncode == 0
    config = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert config["checkpoint_format"] == "gptq_v2"  # the winner's output, whole
    assert no_leftovers(tmp_path)


def test_two_real_processes_racing_for_one_destination(example, tmp_path):
    src = example("gptq", shards=3)
    dst = tmp_path / "dst"
    procs = [subprocess.Popen([sys.executable, "-m", "incq", "convert", str(src), str(dst), "--to", "awq", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert ("appeared while converting" in loser or "exists" in loser) and loser.count("\n") == 1
    assert "identical" in ok("verify", dst, "--against", src) and no_leftovers(tmp_path)


def test_destination_has_normal_permissions(example, tmp_path):
    src = example("gptq", shards=1)
    ok("convert", src, tmp_path / "out", "--to", "awq")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask


# --------------------------------------------------------------------------- --force


def test_force_refuses_what_is_not_incq_output(example, tmp_path, monkeypatch):
    src = example("gptq", shards=1)
    cases = {}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    cases[mine] = "not incq's output"
    cases[tmp_path] = "it holds SRC"  # an ancestor of SRC
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("x")
    cases[work] = "working directory"
    home = tmp_path / "home"
    home.mkdir()
    cases[home] = "home directory"
    link = tmp_path / "link"
    link.symlink_to(mine)
    cases[link] = "is a symlink"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for dst, why in cases.items():
        fails("convert", src, dst, "--to", "awq", "--force", match=why)
    assert (mine / "notes.txt").read_text() == "x" and (work / "a.txt").exists() and no_leftovers(tmp_path)
    assert fingerprint(src)


def test_force_refuses_incq_output_that_was_changed(example, tmp_path):
    src = example("gptq", shards=1)
    out = tmp_path / "out"
    ok("convert", src, out, "--to", "awq")
    ok("convert", src, out, "--to", "awq", "--force")  # unchanged earlier output: replaced
    with open(out / "config.json", "a") as f:
        f.write(" ")
    fails("convert", src, out, "--to", "awq", "--force", match="config.json changed since incq wrote it")


def test_force_replaces_an_empty_directory(example, tmp_path):
    src = example("gptq", shards=1)
    (tmp_path / "empty").mkdir()
    ok("convert", src, tmp_path / "empty", "--to", "awq", "--force")
    assert (tmp_path / "empty" / "config.json").is_file()


def test_force_checks_again_just_before_replacing(example, tmp_path, monkeypatch):
    src = example("gptq", shards=1)
    out = tmp_path / "out"
    ok("convert", src, out, "--to", "awq")
    _during_conversion(monkeypatch, lambda: (out / "added-meanwhile.txt").write_text("x"))
    fails("convert", src, out, "--to", "awq", "--force", match="added-meanwhile.txt was not written by incq")
    assert (out / "added-meanwhile.txt").exists() and no_leftovers(tmp_path)


# --------------------------------------------------------------------------- signals and partial output


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_removes_partial_output(example, tmp_path, monkeypatch, sig, code):
    src = example("gptq", shards=2)
    _during_conversion(monkeypatch, lambda: os.kill(os.getpid(), sig))
    out = run("convert", src, tmp_path / "out", "--to", "awq")
    assert out.returncode == code and out.stderr.count("\n") == 1 and "partial output removed" in out.stderr
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or sig != signal.SIGTERM


def test_ctrl_c_with_workers_prints_one_line(example, tmp_path, monkeypatch, capfd):
    import multiprocessing.pool

    src = example("gptq", shards=3)

    def interrupted(self, timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing.pool.ApplyResult, "get", interrupted)
    out = run("convert", src, tmp_path / "out", "--to", "awq", "--workers", "2")
    assert out.returncode == 130 and out.stderr.count("\n") == 1
    assert "Traceback" not in capfd.readouterr().err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


_DIE_IN_PARTIAL = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import incq._tool.fs as fs
    with fs.partial_directory(Path(sys.argv[1])) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 100000)
        {action}
""")


def test_partial_output_of_a_killed_run_is_removed_by_the_next(example, tmp_path):
    src = example("gptq", shards=1)
    dst = tmp_path / "out"
    subprocess.run([sys.executable, "-c", _DIE_IN_PARTIAL.format(action="os.kill(os.getpid(), 9)"), str(dst)])
    stale = [p for p in tmp_path.iterdir() if fs.PARTIAL in p.name]
    assert len(stale) == 1
    out = run("convert", src, dst, "--to", "awq")
    assert out.returncode == 0 and f"removed {stale[0]}" in out.stderr and no_leftovers(tmp_path)


def test_partial_output_of_a_live_run_is_left_alone(example, tmp_path):
    src = example("gptq", shards=1)
    live = subprocess.Popen([sys.executable, "-c", _DIE_IN_PARTIAL.format(
        action="print('ready', flush=True); sys.stdin.read()"), str(tmp_path / "other")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"
        ok("convert", src, tmp_path / "out", "--to", "awq")
        assert [p for p in tmp_path.iterdir() if fs.PARTIAL in p.name]
    finally:
        live.communicate("")
    assert no_leftovers(tmp_path)


def test_partial_output_of_an_older_incq_is_named_not_removed(example, tmp_path):
    src = example("gptq", shards=1)
    old = tmp_path / ".out.abc123.incq-partial"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"x" * 10)
    out = run("convert", src, tmp_path / "out", "--to", "awq")
    assert out.returncode == 0 and f"{old}" in out.stderr and "remove it if no conversion is running" in out.stderr
    assert old.exists()


def test_a_destination_reached_through_a_symlink_into_src_is_refused(example, tmp_path):
    src = example("gptq", shards=1)
    (tmp_path / "door").symlink_to(src)
    fails("convert", src, tmp_path / "door" / "out", "--to", "awq", match="inside SRC")
    assert not (src / "out").exists()


def test_verify_reads_nothing_outside_either_checkpoint(example, tmp_path):
    src = example("gptq", shards=1)
    (tmp_path / "secret.txt").write_text("x")
    (src / "notes.txt").symlink_to(tmp_path / "secret.txt")
    fails("verify", src, "--against", src, match="notes.txt is a symlink to")
    assert "identical" in ok("verify", src, "--against", src, "--follow-symlinks")
