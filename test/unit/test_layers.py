"""The package's layers import one way, with no circles, and the lower ones stay light.

Layers (``vlm_grasp_locator/<layer>/``), lowest first: core, models, runtime, pipeline,
backends, service, ros, tools. A module may import its own layer and the ones below it.
Function-level (deferred) imports count too: a circle through a lazy import is still a
circle for the reader.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vlm_grasp_locator"
LAYERS = ("core", "models", "runtime", "pipeline", "backends", "service", "ros", "tools")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> List[Tuple[str, int]]:
    """Package-internal modules that ``path`` imports (resolved), with line numbers."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: List[Tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            found += [(f"{name}.{a.name}", node.lineno) for a in node.names]
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return [(n, line) for n, line in found if n in modules and n != module]


def _graph() -> Dict[str, Set[str]]:
    return {_module_name(p): {n for n, _ in _imports(p)} for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_every_module_lives_in_a_layer() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside the layer folders: {loose}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        source = _module_name(path)
        for target, line in _imports(path):
            if _layer(target) > _layer(source):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} "
                             f"({LAYERS[_layer(source)]} -> {LAYERS[_layer(target)]})")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other() -> None:
    graph = _graph()
    circles = []
    for start in graph:  # depth-first search for a path back to start
        stack = [(start, (start,))]
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    circles.append(" -> ".join(trail + (start,)))
                elif nxt not in trail and len(trail) < 12:
                    stack.append((nxt, trail + (nxt,)))
    assert not circles, "\n".join(sorted(set(circles))[:10])


def _loaded_after_import(module: str) -> Set[str]:
    code = (f"import sys, json; import {module}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=120)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", sorted(
    _module_name(p) for p in (PACKAGE / "core").glob("*.py")))
def test_core_imports_without_torch_or_rclpy(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not loaded & {"torch", "rclpy", "onnxruntime"}, module


def test_pipeline_imports_without_rclpy() -> None:
    loaded = _loaded_after_import("vlm_grasp_locator.pipeline.locator")
    assert "rclpy" not in loaded and "onnxruntime" not in loaded
