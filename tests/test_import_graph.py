"""The maths packages are pure libraries: nothing under scores/, metrics/, meta/ or the training losses
imports dataset readers, checkpoints, the command engines or image/file I/O (issue 17).

Two independent checks: a static graph of every ``import`` statement in src/ (including imports
inside functions, which a runtime check would miss), followed transitively; and a fresh interpreter
that imports all the pure modules and lists what landed in ``sys.modules``.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import oodseg

SRC = Path(oodseg.__file__).parent
PURE_PACKAGES = ("scores", "metrics", "meta")
EXTRA_PURE = ("oodseg.training.losses", "oodseg.training.mask_losses", "oodseg.conventions")
FORBIDDEN = ("oodseg.data", "oodseg.models.checkpoint", "oodseg.workflows", "oodseg.report", "oodseg.cli",
             "PIL", "h5py")


def _name(path: Path) -> str:
    parts = ("oodseg", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in SRC.rglob("*.py")}
PURE = sorted([m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] in PURE_PACKAGES] + list(EXTRA_PURE))


def _imports(module: str) -> set[str]:
    """Every module ``module``'s source names in an import statement (absolute names), with their parent packages."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def _closure(module: str) -> dict[str, str]:
    """Every module reachable from ``module`` by imports, mapped to the oodseg module that imports it."""
    seen, stack = {module: ""}, [module]
    while stack:
        current = stack.pop()
        for name in _imports(current):
            if name not in seen:
                seen[name] = current
                if name in MODULES:
                    stack.append(name)
    return seen


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_the_pure_set_is_not_empty():
    assert {"oodseg.scores.base", "oodseg.metrics.pixel", "oodseg.meta.features", "oodseg.training.losses"} <= set(PURE)


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_statically(module):
    reached = _closure(module)
    bad = {name: reached[name] for name in reached if _forbidden(name)}
    assert not bad, f"{module} reaches {', '.join(f'{n} (imported by {by})' for n, by in sorted(bad.items()))}"


def test_the_static_check_sees_lazy_imports():
    """Sanity of the checker on a module known to read datasets inside a function."""
    assert "oodseg.data" in _closure("oodseg.workflows.meta")
    assert "oodseg.models.checkpoint" in _closure("oodseg.workflows.probabilities")


def test_pure_modules_import_no_io_at_run_time():
    probe = ("import importlib, json, sys\n"
             "for name in sys.argv[1:]:\n    importlib.import_module(name)\n"
             "print(json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", probe, *PURE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout)
    assert set(PURE) <= set(loaded)
    assert not [m for m in loaded if _forbidden(m)]
