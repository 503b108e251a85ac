"""The package's layout shows its architecture: the array core (``incq/_core``) stands alone,
the kernels (``incq/_kernels``) build on it, the checkpoint tool (``incq/_tool``) on both; no
module-level import cycle anywhere."""

import ast
from pathlib import Path

import incq

ROOT = Path(incq.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The incq modules ``path`` imports (only at module level, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("incq")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            if base.startswith("incq"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    return {m for m in found if m in modules}


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_the_array_core_needs_neither_the_tool_nor_the_kernels_at_import():
    for name, path in MODULES.items():
        if name.startswith("incq._core"):
            assert not {m for m in imports(path, True) if m.startswith(("incq._tool", "incq._kernels.torch"))}, name
            assert not {m for m in imports(path, False) if m.startswith("incq._tool")}, name


def test_the_kernels_need_nothing_of_the_tool():
    for name, path in MODULES.items():
        if name.startswith("incq._kernels"):
            assert not {m for m in imports(path, False) if m.startswith("incq._tool")}, name


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> modules it imports), or None; a package importing its
    own submodules is no cycle."""
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            return trail + [node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if not nxt.startswith(node + "."):
                cycle = visit(nxt, trail + [node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


def test_no_module_level_import_cycle():
    graph = {name: {m for m in imports(path, True) if m != name} for name, path in MODULES.items()}
    assert find_cycle(graph) is None


def test_the_cycle_check_can_fail():
    assert find_cycle({"incq.a": {"incq.b"}, "incq.b": {"incq.c"}, "incq.c": {"incq.a"}}) == [
        "incq.a", "incq.b", "incq.c", "incq.a"]
    assert find_cycle({"incq.p": {"incq.p.x"}, "incq.p.x": set()}) is None
