"""The code's shape: the switch and the accelerations meet only in the call tracker."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1]
SWITCH = {"sr_plugin.api", "sr_plugin.routing", "sr_plugin.handoff_hook", "sr_plugin.user_cache_mirror",
          "sr_plugin.offload_large", "sr_plugin.policy"}


def module_files() -> dict[str, pathlib.Path]:
    files = {}
    for base, package in ((ROOT / "sr_plugin", "sr_plugin"), (ROOT / "adapters", "sr_plugin.adapters")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every sr_plugin module ``name`` imports, at any depth of its code (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen and nxt != "sr_plugin":  # the package's __init__ imports everything
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_switch_and_the_accelerations_do_not_import_each_other():
    files = module_files()
    known = set(files)
    graph = {name: imports_of(name, path, known) for name, path in files.items()}
    accel = {m for m in known if m == "sr_plugin.accel" or m.startswith("sr_plugin.accel.")}
    assert SWITCH <= known and "sr_plugin.accel.teacache" in accel
    for m in accel:
        assert not reachable(graph, m) & SWITCH, f"{m} reaches the switch: {reachable(graph, m) & SWITCH}"
    for m in SWITCH:
        assert not reachable(graph, m) & accel, f"{m} reaches the accelerations: {reachable(graph, m) & accel}"
    # the graph is read right: the switch does reach its own parts and the meeting place
    assert {"sr_plugin.routing", "sr_plugin.calls"} <= reachable(graph, "sr_plugin.api")
    assert "sr_plugin.calls" in reachable(graph, "sr_plugin.accel")
