"""The rooms of the house (GUIDE, issue 12): technique modules take a model and arrays and return
arrays. They never import the CPU acceleration layer, the bundled networks, the weights store,
the front ends (CLI, gallery) or the process runtime, and never draw (matplotlib); the model
interface never imports a technique. Read from the source (ast), so a lazy import inside a
function counts too."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from jaxviz.techniques import TECHNIQUES

FORBIDDEN_IN_TECHNIQUES = ("jaxviz.accel", "jaxviz.models", "jaxviz.weights", "jaxviz.cli", "jaxviz.gallery",
                           "jaxviz.runtime", "matplotlib")
TECHNIQUE_MODULES = sorted({t.function.split(":")[0] for t in TECHNIQUES.values()})


def imported_modules(module: str) -> set[str]:
    """Every module named by an import statement anywhere in ``module``'s source."""
    path = Path(importlib.util.find_spec(module).origin)
    tree = ast.parse(path.read_text(), str(path))
    package = module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offending(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_registry_names_the_technique_modules():
    assert len(TECHNIQUE_MODULES) >= 15 and "jaxviz.saliency" in TECHNIQUE_MODULES


@pytest.mark.parametrize("module", TECHNIQUE_MODULES)
def test_technique_modules_stay_in_their_room(module):
    assert offending(imported_modules(module), FORBIDDEN_IN_TECHNIQUES) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative import are both found."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tech.py").write_text("def f():\n    from jaxviz.accel import accelerate\n"
                                 "from .runtime import x\nimport matplotlib.pyplot as plt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = imported_modules("fakepkg.tech")
    assert offending(names, ("jaxviz.accel", "fakepkg.runtime", "matplotlib")) == [
        "fakepkg.runtime", "fakepkg.runtime.x", "jaxviz.accel", "jaxviz.accel.accelerate", "matplotlib.pyplot"]


def test_the_interface_imports_no_technique():
    for path in sorted(Path(importlib.util.find_spec("jaxviz.interface").origin).parent.glob("*.py")):
        module = f"jaxviz.interface.{path.stem}" if path.stem != "__init__" else "jaxviz.interface"
        assert offending(imported_modules(module), tuple(TECHNIQUE_MODULES) + FORBIDDEN_IN_TECHNIQUES) == [], module
