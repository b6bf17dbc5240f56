"""``import logitcache`` and ``logitcache --help`` stay light: no torch, no zarr."""

import subprocess
import sys


def test_import_is_light():
    code = "import sys, logitcache, logitcache.cli; print(sorted(m for m in ('torch', 'zarr', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "logitcache", "--help"], capture_output=True, text=True, check=True)
    for verb in ("dump", "info", "verify", "train", "run", "plot", "runs", "export", "pack"):
        assert verb in out.stdout


def import_graph() -> dict[str, set[str]]:
    """Every logitcache module -> the logitcache modules it imports, at any depth of its code
    (imports inside functions count: a lazy import hides a circle, it does not remove it)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "logitcache"
    files = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, file in files.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in files or target in files:
                        graph[name].add(full if full in files else target)
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in files}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself)."""
    order, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(node):
        order[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for node in graph:
        if node not in order:
            visit(node)
    return found


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40 and "logitcache.store._teacher" in graph["logitcache.store._store"]
    assert circles(graph) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"a"}}) == [["a"]] and circles({"a": {"b"}, "b": set()}) == []


def test_the_store_layer_imports_no_training_code():
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("logitcache.store"):
            outside = {m for m in imports if not m.startswith(("logitcache.store", "logitcache.codecs",
                                                               "logitcache.errors"))}
            assert not outside, (module, outside)


def test_the_codecs_import_nothing_above_them():
    graph = import_graph()
    assert "logitcache.codecs.topk" in graph
    for module, imports in graph.items():
        if module.startswith("logitcache.codecs"):
            outside = {m for m in imports if not m.startswith(("logitcache.codecs", "logitcache.errors",
                                                               "logitcache.registry"))}
            assert not outside, (module, outside)


def test_the_store_and_codecs_import_no_torch_at_module_level():
    code = "import sys, logitcache.store, logitcache.codecs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
