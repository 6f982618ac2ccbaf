"""Other libraries' private names (diffusers, torch, para-attn, cache-dit, ...) are read and written in
`sr_plugin.compat` only: a scan of every other module of the package (and the adapters) for private imports, private
attributes of imported modules, private attributes that no code of ours defines, and class attributes that override
a private attribute of another library's base class."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import textwrap

import sr_plugin

PACKAGE = pathlib.Path(sr_plugin.__file__).parent
ADAPTERS = pathlib.Path(importlib.import_module("sr_plugin.adapters").__file__).parent
#: The libraries whose private names must stay in compat.py.
#: The standard library's public names that start with an underscore (namedtuple's API).
STDLIB_PUBLIC = {"_asdict", "_replace", "_fields", "_make", "_field_defaults"}
EXTERNAL = {
    "torch",
    "diffusers",
    "transformers",
    "para_attn",
    "cache_dit",
    "torchao",
    "accelerate",
    "numpy",
    "scipy",
    "skimage",
    "matplotlib",
    "imageio",
    "tokenizers",
    "huggingface_hub",
}


def modules() -> list[tuple[str, pathlib.Path]]:
    found = []
    for root, package in ((PACKAGE, "sr_plugin"), (ADAPTERS, "sr_plugin.adapters")):
        for path in sorted(root.rglob("*.py")):
            if (
                root == PACKAGE
                and ADAPTERS in path.parents
                or root == PACKAGE
                and path.name in ("compat.py", "__main__.py")
            ):
                continue
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found.append((".".join([package, *parts]), path))
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def our_private_names() -> set[str]:
    """Every private name our own code defines: functions, classes, module and class attributes, instance
    attributes it assigns, parameters."""
    names: set[str] = set()
    for _, path in modules() + [("sr_plugin.compat", PACKAGE / "compat.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                if not isinstance(node, ast.ClassDef):
                    names.update(a.arg for a in node.args.args + node.args.kwonlyargs)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("setattr", "getattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(node.args[1].value)
    return {n for n in names if isinstance(n, str) and private(n)}


def violations_in(path: pathlib.Path, ours: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    external_aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in EXTERNAL:
                    external_aliases.add(alias.asname or root)
                    if any(private(p) for p in alias.name.split(".")):
                        found.append(f"{path.name}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] in EXTERNAL:
                if any(private(p) for p in parts):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
                found += [
                    f"{path.name}:{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names
                    if private(a.name)
                ]
                external_aliases.update(a.asname or a.name for a in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in external_aliases:
                found.append(f"{path.name}:{node.lineno}: {base.id}.{node.attr}")
            elif node.attr not in ours and node.attr not in STDLIB_PUBLIC:
                found.append(f"{path.name}:{node.lineno}: .{node.attr} (defined by no code of ours)")
    return found


def test_no_private_name_of_another_library_outside_compat():
    ours = our_private_names()
    found = [v for _, path in modules() for v in violations_in(path, ours)]
    assert not found, "private names of other libraries outside sr_plugin/compat.py:\n" + "\n".join(found)


def test_no_class_of_ours_overrides_a_private_attribute_of_another_librarys_base():
    found = []
    for name, _ in modules():
        module = importlib.import_module(name)
        for cls_name, cls in vars(module).items():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            foreign = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in EXTERNAL]
            if not foreign:
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            assigned = {
                n.attr
                for n in ast.walk(tree)
                if isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
            }
            assigned |= {
                t.id
                for stmt in tree.body[0].body
                if isinstance(stmt, (ast.Assign, ast.AnnAssign))
                for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
                if isinstance(t, ast.Name)
            }  # the class body's own assignments (not a decorator's, via compat)
            for attr in assigned:
                if private(attr) and any(hasattr(b, attr) for b in foreign):
                    found.append(f"{name}.{cls_name}.{attr}")
    assert not found, "class attributes overriding another library's private name:\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scanner is not blind: each kind of violation in a sample file is reported."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch\nfrom diffusers.hooks import _private\nimport torch._dynamo\n"
        "x = torch._C\ny = object()._secret_of_another_library\n"
    )
    found = violations_in(sample, set())
    assert len(found) == 4, found
