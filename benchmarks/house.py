"""How the package is built, in numbers: what issue 21 ("one house") asks to keep small.

    $ python benchmarks/house.py              # this checkout
    $ python benchmarks/house.py --root /path/to/other/checkout

Prints the largest modules, the longest functions, the import circles (the same graph
``tests/stages/test_imports.py`` checks), the modules in which a function takes a whole ``TrainConfig``
(a parameter annotated so, or named ``config`` in a module that reads TrainConfig's fields), the
file names used by more than one module, and the number of test files.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path


def modules(package: Path) -> dict[str, Path]:
    return {str(f.relative_to(package.parent)): f for f in sorted(package.rglob("*.py"))}


def longest_functions(files: dict[str, Path], top: int) -> list[tuple[int, str]]:
    found = []
    for name, file in files.items():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{name}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)[:top]


TRAIN_ONLY = ("TrainConfig", ".kd_weight", ".feature_loss", ".student_features", ".ce_weight")  # no DumpConfig has these


def config_receivers(files: dict[str, Path]) -> list[str]:
    """Modules with a function that takes a whole TrainConfig: annotated so, or a ``config``
    parameter in a module that names TrainConfig or reads a field only it has."""
    found = []
    for name, file in files.items():
        text = file.read_text()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args.args + node.args.kwonlyargs
            annotated = any(a.annotation is not None and "TrainConfig" in ast.unparse(a.annotation) for a in args)
            named = any(a.arg == "config" for a in args) and any(f in text for f in TRAIN_ONLY)
            if annotated or named:
                found.append(name)
                break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    files = modules(root / "logitcache")
    sizes = sorted(((len(f.read_text().splitlines()), n) for n, f in files.items()), reverse=True)
    sys.path.insert(0, str(root))
    from tests.stages.test_imports import circles, import_graph  # the graph the suite checks

    receivers = config_receivers(files)
    names = Counter(Path(n).name for n in files if not n.endswith("__init__.py"))
    print(f"modules: {len(files)}; test files: {len(list((root / 'tests').rglob('test_*.py')))}")
    print("largest modules: " + ", ".join(f"{n} {lines}" for lines, n in sizes[: args.top]))
    print("longest functions: " + ", ".join(f"{where} {lines}" for lines, where in longest_functions(files, args.top)))
    print(f"import circles: {len(circles(import_graph()))}")
    print(f"modules taking a whole TrainConfig: {len(receivers)} ({', '.join(receivers)})")
    print("file names used twice: " + (", ".join(f"{n} x{c}" for n, c in sorted(names.items()) if c > 1) or "none"))


if __name__ == "__main__":
    main()
