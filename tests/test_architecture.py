"""The rooms of the house (GUIDE, issue 12): technique modules take a model and arrays and return
arrays. They never import the CPU acceleration layer, the bundled networks, the weights store,
the front ends (CLI, gallery) or the process runtime, and never draw (matplotlib); the model
interface never imports a technique. A technique never opens a file either: no open(), no
Path.read_*/write_*/iterdir/glob, no np.load/np.save, json.load/dump or PIL's Image.open, and no
import of the I/O room (jaxviz.io, jaxviz.datasets, jaxviz.scan_index, jaxviz.checkpoints, the
file loaders of jaxviz.images). Read from the source (ast), so a lazy import inside a function
counts too (a typing-only ``if TYPE_CHECKING:`` import does not run and is not counted by the
file check)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from jaxviz.techniques import TECHNIQUES

FORBIDDEN_IN_TECHNIQUES = ("jaxviz.accel", "jaxviz.models", "jaxviz.weights", "jaxviz.cli", "jaxviz.gallery",
                           "jaxviz.runtime", "matplotlib")
# The I/O room: the modules that read and write files for the techniques.
IO_ROOM = ("jaxviz.io", "jaxviz.images", "jaxviz.datasets", "jaxviz.scan_index", "jaxviz.checkpoints")
REGISTRY_MODULES = sorted({t.function.split(":")[0] for t in TECHNIQUES.values()})
# The scan is registered by its front door (a folder in, an INDEX folder out: jaxviz.scan_index);
# its technique, the jitted top-k step on arrays, is jaxviz.scan.
TECHNIQUE_MODULES = sorted((set(REGISTRY_MODULES) - set(IO_ROOM)) | {"jaxviz.scan"})
# What a technique may not import: the I/O room and the functions of jaxviz.images that touch files
# (fit_image, to_uint8 and the rest of jaxviz.images work on arrays and stay allowed).
FILE_IMPORTS = ("jaxviz.io", "jaxviz.datasets", "jaxviz.scan_index", "jaxviz.checkpoints",
                "jaxviz.images.load_image", "jaxviz.images.load_images", "jaxviz.images.load_thumbnails",
                "jaxviz.images.save_image", "jaxviz.images._read_file")
# Functions that read or write files, by qualified name (aliases resolved: np.load is numpy.load).
FILE_FUNCTIONS = ("open", "io.open", "os.open", "os.listdir", "os.scandir", "os.walk", "glob", "shutil", "pickle",
                  "numpy.load", "numpy.save", "numpy.savez", "numpy.savez_compressed", "numpy.fromfile",
                  "numpy.loadtxt", "numpy.savetxt", "numpy.genfromtxt", "json.load", "json.dump", "PIL.Image.open")
# Methods that read or write files whatever the object (Path, Image, ndarray.tofile).
FILE_METHODS = frozenset({"open", "read_bytes", "write_bytes", "read_text", "write_text", "iterdir", "glob", "rglob",
                          "tofile"})


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


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (typing only, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def file_access(source: str, module: str) -> list[str]:
    """Where ``source`` (the text of ``module``) touches files: ``"line N: what"`` for each call of
    a file function or method (``FILE_FUNCTIONS``, ``FILE_METHODS``) and each import (or use through
    a module alias, e.g. ``images.load_image``) of the I/O room (``FILE_IMPORTS``), lazy ones included."""
    tree = ast.parse(source, module)
    package = module.rsplit(".", 1)[0]
    aliases: dict[str, str] = {}  # local name -> qualified name, from every import in the file
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                if offending({alias.name}, FILE_IMPORTS):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
                if offending({base, f"{base}.{alias.name}"}, FILE_IMPORTS):
                    found.append(f"line {node.lineno}: from {base} import {alias.name}")
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Attribute) and node.attr in FILE_METHODS:
            found.append(f"line {node.lineno}: .{node.attr}")
        chain = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if chain and isinstance(node.ctx, ast.Load):
            qualified = ".".join([aliases.get(chain[0], chain[0])] + chain[1:])
            if chain[0] in aliases and offending({qualified}, FILE_IMPORTS):
                found.append(f"line {node.lineno}: {'.'.join(chain)} ({qualified})")
            elif offending({qualified}, FILE_FUNCTIONS) and not (isinstance(node, ast.Attribute)
                                                                 and node.attr in FILE_METHODS):
                found.append(f"line {node.lineno}: {'.'.join(chain)} ({qualified})")
    return sorted(set(found), key=lambda s: (int(s.split(":")[0].split()[1]), s))


def module_source(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text()


def offending(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_registry_names_the_technique_modules():
    assert len(TECHNIQUE_MODULES) >= 15 and "jaxviz.saliency" in TECHNIQUE_MODULES


@pytest.mark.parametrize("module", TECHNIQUE_MODULES)
def test_technique_modules_stay_in_their_room(module):
    assert offending(imported_modules(module), FORBIDDEN_IN_TECHNIQUES) == []


@pytest.mark.parametrize("module", TECHNIQUE_MODULES)
def test_technique_modules_open_no_file(module):
    """A technique takes arrays and returns arrays; reading and writing files is the I/O room's."""
    assert file_access(module_source(module), module) == []


def test_the_io_room_is_not_a_technique_room():
    """Only the scan's front door is registered from the I/O room: a technique cannot hide there."""
    assert set(REGISTRY_MODULES) & set(IO_ROOM) == {"jaxviz.scan_index"}
    assert "jaxviz.scan" in TECHNIQUE_MODULES and not set(TECHNIQUE_MODULES) & set(IO_ROOM)


def test_the_file_check_sees_every_way_to_touch_a_file():
    """The checker itself: calls, methods, aliases, lazy and relative imports are all found; string
    JSON, array functions and typing-only imports are not."""
    source = """
from typing import TYPE_CHECKING
import json, numpy as np
from numpy import save as keep
from pathlib import Path
from PIL import Image
from jaxviz import images
from jaxviz.images import fit_image
if TYPE_CHECKING:
    from jaxviz.scan_index import Index
def f(p):
    from jaxviz.datasets import base_images
    from .io import atomic_write
    a = open(p)
    b = Path(p).read_text() + json.dumps({}) + json.loads("1")
    c = np.load(p), np.asarray(p), keep
    d = images.load_image(p), images.fit_image(p, 2), fit_image
    e = Image.open(p), [q for q in Path(p).iterdir()], json.dump
    np.savez(p, x=1)
"""
    assert file_access(source, "jaxviz.fake") == [
        "line 12: from jaxviz.datasets import base_images", "line 13: from jaxviz.io import atomic_write",
        "line 14: open (open)", "line 15: .read_text", "line 16: keep (numpy.save)", "line 16: np.load (numpy.load)",
        "line 17: images.load_image (jaxviz.images.load_image)", "line 18: .iterdir", "line 18: .open",
        "line 18: json.dump (json.dump)", "line 19: np.savez (numpy.savez)"]


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


def _library_modules() -> list[str]:
    """Every module of the library's rooms (the front ends, CLI and gallery, are scripts)."""
    import pkgutil

    import jaxviz
    return sorted(m.name for m in pkgutil.walk_packages(jaxviz.__path__, "jaxviz.")
                  if not m.name.startswith(("jaxviz.cli", "jaxviz.gallery")) and m.name != "jaxviz.__main__")


def test_every_public_function_has_type_hints_that_resolve():
    """GUIDE: type hints on public functions; every argument and the return, and they name
    things that exist (typing.get_type_hints resolves them)."""
    import importlib
    import inspect
    import typing
    import jaxviz.interface
    import jaxviz.scan_index
    # names imported under TYPE_CHECKING only (import cycles, cheap imports) resolve here
    import optax
    typing_only = {"ModelLike": jaxviz.interface.ModelLike, "PyTree": jaxviz.interface.PyTree, "optax": optax,
                   "Index": jaxviz.scan_index.Index}
    missing = []
    for name in _library_modules():
        module = importlib.import_module(name)
        for fname, fn in vars(module).items():
            if fname.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != name:
                continue
            sig = inspect.signature(fn)
            unhinted = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty
                        and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
            if sig.return_annotation is inspect.Signature.empty:
                unhinted.append("return")
            if unhinted:
                missing.append(f"{name}.{fname}: {', '.join(unhinted)}")
            typing.get_type_hints(fn, localns=typing_only)  # raises for a hint naming nothing
    assert not missing, missing
