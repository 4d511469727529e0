"""The package's layers: imports run one way (core -> methods -> cli / tour / benchmarks)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "wherewhat"
# Above the methods: they may import anything; nothing below may import them.
TOP = {"wherewhat.cli", "wherewhat.tour", "wherewhat.__main__"}
METHODS = "wherewhat.methods"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name in TOP:
            continue
        own_method = ".".join(name.split(".")[:3]) if _is_under(name, METHODS) else None
        for line, target in _imports(path):
            if any(_is_under(target, top) for top in TOP):
                problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} (top layer)")
            elif _is_under(target, METHODS) and target != METHODS:
                target_method = ".".join(target.split(".")[:3])
                if own_method is None:
                    problems.append(f"{path.relative_to(PACKAGE)}:{line} (core) imports {target}")
                elif target_method != own_method:
                    problems.append(
                        f"{path.relative_to(PACKAGE)}:{line} imports another method: {target}"
                    )
    return problems


def test_core_never_imports_a_method_and_methods_not_each_other():
    assert _violations() == []


def test_the_check_sees_a_core_module_importing_a_method(tmp_path, monkeypatch):
    fake = tmp_path / "wherewhat"
    (fake / "metrics").mkdir(parents=True)
    (fake / "metrics" / "bad.py").write_text(
        "def f():\n    from wherewhat.methods.lzu import task\n"
    )
    (fake / "methods" / "a").mkdir(parents=True)
    (fake / "methods" / "a" / "x.py").write_text("import wherewhat.methods.b.y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _violations() == [
        "methods/a/x.py:1 imports another method: wherewhat.methods.b.y",
        "metrics/bad.py:2 (core) imports wherewhat.methods.lzu",
    ]
