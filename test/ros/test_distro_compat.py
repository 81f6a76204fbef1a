"""Every rclpy API the package uses exists in the apt distributions' rclpy (Humble, Jazzy).

The rclpy here is Kilted's (PyPI wheels), so running the tests proves nothing about older
distributions: Humble's rclpy lacks e.g. ``Node.add_post_set_parameters_callback`` and
``rclpy.parameter_client`` (both Iron+). This test parses the package with :mod:`ast` and
checks what it takes from rclpy against the upstream rclpy sources of each distribution
kept in ``../shared/ros2-tools/distro-reference/<distro>/rclpy`` (parsed with ast as well,
they cannot be imported here). Checked:

* ``import rclpy.x`` / ``from rclpy.x import Y``: the module exists and defines (or
  re-exports) ``Y``;
* ``rclpy.x.Y`` attribute use on imported rclpy modules;
* keyword arguments of calls to rclpy functions and classes (``rclpy.init(domain_id=...)``,
  ``ActionServer(..., callback_group=...)``) against their signatures;
* ``self.<attr>`` in classes derived from an rclpy class (``Node``, ``LifecycleNode``),
  including mixins combined with one, when the package itself does not define ``<attr>``;
  with keyword arguments of the calls (``self.create_publisher(..., qos_profile=...)``);
* attributes of values whose rclpy class is known: instances created from rclpy classes,
  results of annotated rclpy calls (``create_publisher() -> Publisher``) and of
  ``get_logger()`` (``self.get_logger().warning(..., throttle_duration_sec=...)``), kept in
  local variables or ``self.<attr>``.

Feature detection is honoured: a use inside ``if hasattr(obj, "name"):`` (for that name)
or inside ``try:`` with an ``except ImportError/AttributeError`` handler is not checked.
Not checked: the launch files (launch and launch_ros sources are not in the reference),
values passed through function arguments or containers, and behaviour differences.
"""
from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "ros2-tools" / "distro-reference"
DISTROS = ("humble", "jazzy")
# What a robot runs: the package, the soak tool and the examples (not the tests).
CHECKED_GLOBS = ("vlm_grasp_locator/**/*.py", "bench/*.py", "examples/*.py")

# Calls whose result class the sources do not annotate.
UNANNOTATED_RETURNS: Dict[Tuple[str, str], Tuple[str, str]] = {
    ("rclpy.node.Node", "get_logger"): ("rclpy.impl.rcutils_logger", "RcutilsLogger"),
    ("rclpy.logging", "get_logger"): ("rclpy.impl.rcutils_logger", "RcutilsLogger"),
    ("rclpy.impl.rcutils_logger.RcutilsLogger", "get_child"):
        ("rclpy.impl.rcutils_logger", "RcutilsLogger"),
    ("rclpy", "create_node"): ("rclpy.node", "Node"),
}
GUARD_EXCEPTIONS = {"ImportError", "ModuleNotFoundError", "AttributeError"}
OPEN_BASES = {"object", "Generic", "Protocol", "ABC", "Exception", "RuntimeError", "ValueError",
              "TypeError", "IntEnum", "Enum", "NamedTuple"}


# ------------------------------------------------------------------ the reference rclpy
@dataclasses.dataclass
class Signature:
    params: Set[str]
    var_keyword: bool
    returns: Optional[ast.expr]


@dataclasses.dataclass
class ClassInfo:
    module: str
    name: str
    bases: List[ast.expr]
    members: Set[str]
    methods: Dict[str, Signature]

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclasses.dataclass
class ModuleInfo:
    name: str
    path: Path
    names: Set[str]
    imports: Dict[str, Tuple[str, Optional[str]]]  # local name -> (module, name or None)
    functions: Dict[str, Signature]
    classes: Dict[str, ClassInfo]


def _signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Signature:
    a = fn.args
    params = {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    return Signature(params, a.kwarg is not None, fn.returns)


def _absolute(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def _top_level(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """Module statements, including those in top-level if/try blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            yield from _top_level(stmt.body)
            yield from _top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            handlers = [h.body for h in stmt.handlers]
            for block in (stmt.body, stmt.orelse, stmt.finalbody, *handlers):
                yield from _top_level(block)


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)


def _class_info(module: str, node: ast.ClassDef) -> ClassInfo:
    members: Set[str] = set()
    methods: Dict[str, Signature] = {}
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members.add(stmt.name)
            methods[stmt.name] = _signature(stmt)
        elif isinstance(stmt, ast.ClassDef):
            members.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                members.update(_target_names(t))
        elif isinstance(stmt, ast.AnnAssign):
            members.update(_target_names(stmt.target))
    for sub in ast.walk(node):  # instance attributes: self.x = ...
        targets: List[ast.expr] = []
        if isinstance(sub, ast.Assign):
            targets = list(sub.targets)
        elif isinstance(sub, (ast.AnnAssign, ast.AugAssign)):
            targets = [sub.target]
        for t in targets:
            if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                    and t.value.id == "self"):
                members.add(t.attr)
    return ClassInfo(module, node.name, list(node.bases), members, methods)


class Reference:
    """One distribution's rclpy, indexed from its sources."""

    def __init__(self, distro: str, root: Path) -> None:
        self.distro = distro
        self.root = root  # the folder holding the rclpy package
        self.modules: Dict[str, ModuleInfo] = {}
        for path in sorted((root / "rclpy").rglob("*.py")):
            relative = path.relative_to(root).with_suffix("")
            parts = list(relative.parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            self.modules[".".join(parts)] = self._index(".".join(parts), path, is_package)

    @staticmethod
    def _index(name: str, path: Path, is_package: bool) -> ModuleInfo:
        tree = ast.parse(path.read_text(), filename=str(path))
        info = ModuleInfo(name, path, set(), {}, {}, {})
        for stmt in _top_level(tree.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                info.names.add(stmt.name)
                info.functions[stmt.name] = _signature(stmt)
            elif isinstance(stmt, ast.ClassDef):
                info.names.add(stmt.name)
                info.classes[stmt.name] = _class_info(name, stmt)
            elif isinstance(stmt, ast.Assign):
                for t in stmt.targets:
                    info.names.update(_target_names(t))
            elif isinstance(stmt, ast.AnnAssign):
                info.names.update(_target_names(stmt.target))
            elif isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    local = alias.asname or alias.name.split(".")[0]
                    info.names.add(local)
                    info.imports[local] = (alias.name if alias.asname else local, None)
            elif isinstance(stmt, ast.ImportFrom):
                source = _absolute(name, is_package, stmt.level, stmt.module)
                for alias in stmt.names:
                    local = alias.asname or alias.name
                    info.names.add(local)
                    info.imports[local] = (source, alias.name)
        return info

    def display(self, module: str) -> str:
        """The source file of ``module`` (or where it would be), relative to the reference."""
        info = self.modules.get(module)
        if info is not None:
            return str(info.path.relative_to(REFERENCE))
        guess = self.root.relative_to(REFERENCE) / Path(*module.split("."))
        return f"{guess}.py (no such module in {self.distro})"

    def has_module(self, module: str) -> bool:
        return module in self.modules

    def has_name(self, module: str, name: str) -> bool:
        info = self.modules.get(module)
        return info is not None and (name in info.names or f"{module}.{name}" in self.modules)

    def resolve(self, module: str, name: str, depth: int = 0) -> Tuple[str, object]:
        """What ``module.name`` is, following re-exports: ('module'|'class'|'function'|
        'other'|'missing', payload)."""
        if f"{module}.{name}" in self.modules:
            return "module", f"{module}.{name}"
        info = self.modules.get(module)
        if info is None or name not in info.names:
            return "missing", None
        if name in info.classes:
            return "class", info.classes[name]
        if name in info.functions:
            return "function", (module, name, info.functions[name])
        if name in info.imports and depth < 10:
            source, imported = info.imports[name]
            if imported is None:
                return ("module", source) if source in self.modules else ("other", None)
            if source.startswith("rclpy"):
                return self.resolve(source, imported, depth + 1)
        return "other", None

    def _base(self, cls: ClassInfo, base: ast.expr) -> Optional[ClassInfo]:
        """The rclpy class a base expression names, or None (outside rclpy / unknown)."""
        if isinstance(base, ast.Subscript):
            base = base.value
        module, name = cls.module, None
        if isinstance(base, ast.Name):
            name = base.id
        elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            info = self.modules.get(cls.module)
            target = info.imports.get(base.value.id) if info else None
            if target and target[1] is None:
                module, name = target[0], base.attr
        if name is None:
            return None
        kind, payload = self.resolve(module, name)
        return payload if kind == "class" else None  # type: ignore[return-value]

    def lookup(self, cls: ClassInfo, attr: str) -> Tuple[bool, Optional[Signature]]:
        """(found or unknowable, signature when it is a method) along the class's bases."""
        seen: Set[str] = set()
        stack = [cls]
        open_ended = False
        while stack:
            current = stack.pop(0)
            if current.qualname in seen:
                continue
            seen.add(current.qualname)
            if attr in current.members:
                return True, current.methods.get(attr)
            for base in current.bases:
                resolved = self._base(current, base)
                if resolved is not None:
                    stack.append(resolved)
                else:
                    plain = base.value if isinstance(base, ast.Subscript) else base
                    label = plain.id if isinstance(plain, ast.Name) else getattr(plain, "attr", "")
                    if label not in OPEN_BASES:
                        open_ended = True  # a base we cannot see (e.g. a C extension type)
        return open_ended, None

    def file_of(self, cls: ClassInfo) -> str:
        """The files of the class and its rclpy bases (where a member would be)."""
        files: List[str] = []
        stack, seen = [cls], set()
        while stack:
            current = stack.pop(0)
            if current.qualname in seen:
                continue
            seen.add(current.qualname)
            shown = self.display(current.module)
            if shown not in files:
                files.append(shown)
            stack.extend(b for b in (self._base(current, e) for e in current.bases) if b)
        return ", ".join(files)

    def return_class(self, owner: str, name: str, sig: Optional[Signature],
                     module: str) -> Optional[ClassInfo]:
        """The rclpy class a call returns, from UNANNOTATED_RETURNS or its annotation."""
        if (owner, name) in UNANNOTATED_RETURNS:
            kind, payload = self.resolve(*UNANNOTATED_RETURNS[(owner, name)])
            return payload if kind == "class" else None  # type: ignore[return-value]
        if sig is None or sig.returns is None:
            return None
        annotation = sig.returns
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(annotation, ast.Name):
            kind, payload = self.resolve(module, annotation.id)
            return payload if kind == "class" else None  # type: ignore[return-value]
        return None


# ------------------------------------------------------------------ the package's uses
@dataclasses.dataclass(frozen=True)
class Problem:
    what: str
    where: str
    reference_file: str

    def __str__(self) -> str:
        return f"{self.what} at {self.where}: not in {self.reference_file}"


def _guarded_names(ancestors: Sequence[ast.AST]) -> Tuple[Set[str], bool]:
    """(names feature-detected with hasattr by enclosing ifs, inside an import/attr guard)."""
    names: Set[str] = set()
    in_try = False
    for parent in ancestors:
        if isinstance(parent, (ast.If, ast.IfExp)):
            for sub in ast.walk(parent.test):
                if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name)
                        and sub.func.id == "hasattr" and len(sub.args) == 2
                        and isinstance(sub.args[1], ast.Constant)):
                    names.add(str(sub.args[1].value))
        elif isinstance(parent, ast.Try):
            for handler in parent.handlers:
                types = handler.type
                elts = types.elts if isinstance(types, ast.Tuple) else [types]
                if any(isinstance(t, ast.Name) and t.id in GUARD_EXCEPTIONS for t in elts):
                    in_try = True
    return names, in_try


class PackageChecker:
    """Collects the package's rclpy uses and checks them against one Reference."""

    def __init__(self, ref: Reference, files: Sequence[Path]) -> None:
        self.ref = ref
        self.files = files
        self.trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in files}
        self.problems: List[Problem] = []
        self.checked = 0
        # Package classes by name (the package's names are unique enough for mixins).
        self.own_classes: Dict[str, ast.ClassDef] = {}
        self._members_cache: Dict[str, Set[str]] = {}
        self._subclasses_cache: Dict[str, List[ast.ClassDef]] = {}
        for tree in self.trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    self.own_classes.setdefault(node.name, node)

    # ---- helpers
    def _where(self, path: Path, node: ast.AST) -> str:
        return f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"

    def _fail(self, what: str, path: Path, node: ast.AST, ref_file: str) -> None:
        self.problems.append(Problem(what, self._where(path, node), ref_file))

    @staticmethod
    def _imports(tree: ast.Module) -> Dict[str, Tuple[str, Optional[str]]]:
        """Every rclpy import in the file (any scope): local name -> (module, name)."""
        out: Dict[str, Tuple[str, Optional[str]]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "rclpy":
                        if alias.asname:
                            out[alias.asname] = (alias.name, None)
                        else:
                            out["rclpy"] = ("rclpy", None)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module.split(".")[0] == "rclpy"):
                for alias in node.names:
                    out[alias.asname or alias.name] = (node.module, alias.name)
        return out

    def _resolve_symbol(self, imports: Dict[str, Tuple[str, Optional[str]]],
                        expr: ast.expr) -> Tuple[str, object]:
        """What an expression naming an rclpy thing (``Node``, ``rclpy.init``) is."""
        if isinstance(expr, ast.Name) and expr.id in imports:
            module, name = imports[expr.id]
            if name is None:
                return ("module", module) if self.ref.has_module(module) else ("missing", None)
            return self.ref.resolve(module, name)
        if isinstance(expr, ast.Attribute):
            kind, payload = self._resolve_symbol(imports, expr.value)
            if kind == "module":
                return self.ref.resolve(str(payload), expr.attr)
        return "none", None

    def _rclpy_bases(self, cls: ast.ClassDef, imports: Dict[str, Tuple[str, Optional[str]]],
                     depth: int = 0) -> List[ClassInfo]:
        out: List[ClassInfo] = []
        for base in cls.bases:
            kind, payload = self._resolve_symbol(imports, base)
            if kind == "class":
                out.append(payload)  # type: ignore[arg-type]
            elif isinstance(base, ast.Name) and base.id in self.own_classes and depth < 10:
                out.extend(self._rclpy_bases(self.own_classes[base.id], imports, depth + 1))
        return out

    def _own_members(self, cls: ast.ClassDef, depth: int = 0) -> Set[str]:
        """What the package's class hierarchy defines (methods, attributes)."""
        if cls.name in self._members_cache and depth == 0:
            return self._members_cache[cls.name]
        members = set(_class_info("", cls).members)
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in self.own_classes and depth < 10:
                members |= self._own_members(self.own_classes[base.id], depth + 1)
        if depth == 0:
            self._members_cache[cls.name] = members
        return members

    def _subclasses(self, name: str) -> List[ast.ClassDef]:
        """Package classes that have ``name`` among their (package) ancestors, itself included."""
        def ancestors(cls: ast.ClassDef, depth: int = 0) -> Set[str]:
            out = {cls.name}
            for base in cls.bases:
                if isinstance(base, ast.Name) and base.id in self.own_classes and depth < 10:
                    out |= ancestors(self.own_classes[base.id], depth + 1)
            return out
        if name not in self._subclasses_cache:
            self._subclasses_cache[name] = [
                c for c in self.own_classes.values() if name in ancestors(c)]
        return self._subclasses_cache[name]

    # ---- the walk
    def run(self) -> List[Problem]:
        for path, tree in self.trees.items():
            self._check_file(path, tree)
        return self.problems

    def _check_file(self, path: Path, tree: ast.Module) -> None:
        imports = self._imports(tree)
        parents: Dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node

        def ancestors(node: ast.AST) -> List[ast.AST]:
            out = []
            while node in parents:
                node = parents[node]
                out.append(node)
            return out

        # Types of self attributes per package class and of local variables per function.
        class_of: Dict[ast.AST, ast.ClassDef] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for sub in ast.walk(node):  # outer classes first: inner ones overwrite
                    class_of[sub] = node

        for node in ast.walk(tree):
            guarded, in_try = _guarded_names(ancestors(node))
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module.split(".")[0] == "rclpy"):
                if in_try:
                    continue
                self.checked += 1
                if not self.ref.has_module(node.module):
                    self._fail(f"from {node.module} import ...", path, node,
                               self.ref.display(node.module))
                    continue
                for alias in node.names:
                    self.checked += 1
                    if not self.ref.has_name(node.module, alias.name):
                        self._fail(f"from {node.module} import {alias.name}", path, node,
                                   self.ref.display(node.module))
            elif isinstance(node, ast.Import) and not in_try:
                for alias in node.names:
                    if alias.name.split(".")[0] == "rclpy":
                        self.checked += 1
                        if not self.ref.has_module(alias.name):
                            self._fail(f"import {alias.name}", path, node,
                                       self.ref.display(alias.name))
            elif isinstance(node, ast.Attribute) and not in_try and node.attr not in guarded:
                self._check_attribute(path, node, imports, class_of.get(node), parents)
            if isinstance(node, ast.Call) and not in_try:
                self._check_call_keywords(path, node, imports, class_of.get(node), parents)

    def _value_class(self, expr: ast.expr, imports: Dict[str, Tuple[str, Optional[str]]],
                     cls: Optional[ast.ClassDef], parents: Dict[ast.AST, ast.AST],
                     depth: int = 0) -> List[ClassInfo]:
        """The rclpy classes ``expr`` is an instance of (empty when unknown)."""
        if depth > 6:
            return []
        if isinstance(expr, ast.Name) and expr.id == "self" and cls is not None:
            return [c for sub in self._subclasses(cls.name)
                    for c in self._rclpy_bases(sub, imports)]
        if isinstance(expr, ast.Call):
            kind, payload = self._resolve_symbol(imports, expr.func)
            if kind == "class":
                return [payload]  # type: ignore[list-item]
            if kind == "function":
                module, name, sig = payload  # type: ignore[misc]
                found = self.ref.return_class(module, name, sig, module)
                return [found] if found else []
            if isinstance(expr.func, ast.Attribute):
                out = []
                for owner in self._value_class(expr.func.value, imports, cls, parents, depth + 1):
                    if self._own_defines(cls, expr.func, owner):
                        continue
                    ok, sig = self.ref.lookup(owner, expr.func.attr)
                    found = self.ref.return_class(owner.qualname, expr.func.attr, sig,
                                                  owner.module)
                    if found:
                        out.append(found)
                return out
            return []
        # A local variable or self attribute: the classes of what is assigned to it.
        if isinstance(expr, ast.Name):
            scope: Optional[ast.AST] = expr
            while scope is not None and not isinstance(
                    scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                scope = parents.get(scope)
            matches = lambda t: isinstance(t, ast.Name) and t.id == expr.id  # noqa: E731
        elif (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)
              and expr.value.id == "self" and cls is not None):
            scope = cls
            matches = lambda t: (isinstance(t, ast.Attribute)  # noqa: E731
                                 and isinstance(t.value, ast.Name) and t.value.id == "self"
                                 and t.attr == expr.attr)
        else:
            return []
        out: List[ClassInfo] = []
        for sub in ast.walk(scope) if scope is not None else ():
            if isinstance(sub, ast.Assign) and any(matches(t) for t in sub.targets):
                out.extend(self._value_class(sub.value, imports, cls, parents, depth + 1))
        return out

    def _own_defines(self, cls: Optional[ast.ClassDef], attr: ast.Attribute,
                     owner: ClassInfo) -> bool:
        """``self.x`` where the package's own class hierarchy defines ``x``."""
        if not (isinstance(attr.value, ast.Name) and attr.value.id == "self" and cls):
            return False
        return any(attr.attr in self._own_members(sub) for sub in self._subclasses(cls.name))

    def _check_attribute(self, path: Path, node: ast.Attribute,
                         imports: Dict[str, Tuple[str, Optional[str]]],
                         cls: Optional[ast.ClassDef], parents: Dict[ast.AST, ast.AST]) -> None:
        # rclpy.x.Y on an imported module
        kind, payload = self._resolve_symbol(imports, node.value)
        if kind == "module":
            self.checked += 1
            if not self.ref.has_name(str(payload), node.attr):
                self._fail(f"{ast.unparse(node)}", path, node, self.ref.display(str(payload)))
            return
        if isinstance(node.ctx, ast.Store):  # self.x = ...: the package defines x
            return
        for owner in self._value_class(node.value, imports, cls, parents):
            if self._own_defines(cls, node, owner):
                return
            self.checked += 1
            found, _ = self.ref.lookup(owner, node.attr)
            if not found:
                self._fail(f"{ast.unparse(node)} ({owner.name}.{node.attr})", path, node,
                           self.ref.file_of(owner))
                return

    def _check_call_keywords(self, path: Path, node: ast.Call,
                             imports: Dict[str, Tuple[str, Optional[str]]],
                             cls: Optional[ast.ClassDef], parents: Dict[ast.AST, ast.AST]) -> None:
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        if not keywords:
            return
        signatures: List[Tuple[str, Signature, str]] = []
        kind, payload = self._resolve_symbol(imports, node.func)
        if kind == "function":
            module, name, sig = payload  # type: ignore[misc]
            signatures.append((f"{module}.{name}", sig, self.ref.display(module)))
        elif kind == "class":
            found, sig = self.ref.lookup(payload, "__init__")  # type: ignore[arg-type]
            if sig is not None:
                signatures.append((f"{payload.name}()", sig,  # type: ignore[union-attr]
                                   self.ref.file_of(payload)))  # type: ignore[arg-type]
        elif isinstance(node.func, ast.Attribute):
            for owner in self._value_class(node.func.value, imports, cls, parents):
                if self._own_defines(cls, node.func, owner):
                    return
                _, sig = self.ref.lookup(owner, node.func.attr)
                if sig is not None:
                    signatures.append((f"{owner.name}.{node.func.attr}()", sig,
                                       self.ref.file_of(owner)))
        for label, sig, ref_file in signatures:
            if sig.var_keyword:
                continue
            for keyword in keywords:
                self.checked += 1
                if keyword not in sig.params:
                    self._fail(f"{label} keyword {keyword}=", path, node, ref_file)


# ------------------------------------------------------------------ tests
def _reference(distro: str) -> Reference:
    root = REFERENCE / distro / "rclpy"
    if not (root / "rclpy" / "node.py").is_file():
        pytest.skip(f"{root} absent: the distro reference lives in ../shared next to the "
                    "repository (present in CI; not in a plain clone)")
    return Reference(distro, root)


def _package_files() -> List[Path]:
    return sorted(p for pattern in CHECKED_GLOBS for p in REPO.glob(pattern))


def _check_source(tmp_path: Path, distro: str, source: str) -> List[Problem]:
    """Problems of one source snippet (named snippet.py in the messages)."""
    path = tmp_path / "snippet.py"
    path.write_text(source)
    checker = PackageChecker(_reference(distro), [path])
    checker._where = lambda p, n: f"snippet.py:{getattr(n, 'lineno', 0)}"  # type: ignore
    return checker.run()


@pytest.mark.parametrize("distro", DISTROS)
def test_package_uses_only_rclpy_apis_of(distro: str) -> None:
    checker = PackageChecker(_reference(distro), _package_files())
    problems = checker.run()
    assert checker.checked > 50, f"only {checker.checked} uses checked: the walk found too few"
    assert not problems, (
        f"rclpy APIs missing from {distro} ({len(problems)}):\n"
        + "\n".join(f"  {p}" for p in sorted(set(problems), key=str)))


SNIPPET = '''
import rclpy
from rclpy.node import Node
from rclpy.lifecycle import LifecycleNode
from rclpy.parameter_client import AsyncParameterClient

class Mixin:
    def setup(self):
        self.add_post_set_parameters_callback(self.cb)
        self.get_logger().warning("x", throttle_duration_sec=1.0)
        self.create_publisher(int, "t", 10, qos_overriding_options=None, bogus_kw=1)
        self.own_helper()

    def own_helper(self):
        pass

    def cb(self, params):
        return params

class Managed(Mixin, LifecycleNode):
    pass

class Guarded(Node):
    def cb(self, params):
        return params

    def setup(self):
        if hasattr(self, "add_post_set_parameters_callback"):
            self.add_post_set_parameters_callback(self.cb)
        try:
            from rclpy.parameter_client import AsyncParameterClient
        except ImportError:
            pass
        logger = self.get_logger()
        logger.no_such_method("y")
        rclpy.init(domain_id=3)
        rclpy.no_such_function()
'''


def test_checker_finds_iron_apis_in_humble(tmp_path: Path) -> None:
    found = {p.what.split(" (")[0]: p for p in _check_source(tmp_path, "humble", SNIPPET)}
    assert "from rclpy.parameter_client import ..." in found
    assert found["from rclpy.parameter_client import ..."].reference_file.endswith(
        "parameter_client.py (no such module in humble)")
    post = found["self.add_post_set_parameters_callback"]
    assert post.where == "snippet.py:9"  # the mixin's call; the hasattr-guarded one passes
    assert post.reference_file.split(", ")[0] == "humble/rclpy/rclpy/lifecycle/node.py"
    assert "humble/rclpy/rclpy/node.py" in post.reference_file.split(", ")
    assert "LifecycleNode.create_publisher() keyword bogus_kw=" in found
    assert "logger.no_such_method" in found
    assert "rclpy.no_such_function" in found
    assert len(found) == 5, sorted(found)  # warning(throttle_duration_sec=), init(domain_id=) ok


def test_checker_accepts_the_same_apis_in_jazzy(tmp_path: Path) -> None:
    found = {p.what.split(" (")[0] for p in _check_source(tmp_path, "jazzy", SNIPPET)}
    assert found == {"LifecycleNode.create_publisher() keyword bogus_kw=",
                     "logger.no_such_method", "rclpy.no_such_function"}


def test_reference_skips_cleanly_without_shared(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REFERENCE", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception, match="absent"):
        _reference("humble")


# ------------------------------------------------------------------ Humble's parameter path
def test_node_validates_then_applies_parameters_without_post_set_callbacks() -> None:
    """The node as on Humble (no add_post_set_parameters_callback): a rejected value
    changes nothing, an accepted one reaches the settings, in one on-set callback."""
    rclpy = pytest.importorskip("rclpy")
    try:
        from rclpy.parameter import Parameter
        from rclpy.signals import SignalHandlerOptions

        from node_harness import ScriptedLocator, reserve_domain_id
        from vlm_grasp_locator.ros.node import GraspLocatorNode
    except ImportError as e:
        pytest.skip(f"the node's messages are not importable ({e}): run scripts/setup.sh")

    class HumbleLikeNode(GraspLocatorNode):
        @property
        def add_post_set_parameters_callback(self) -> None:
            raise AttributeError("Humble's Node has no add_post_set_parameters_callback")

        def add_on_set_parameters_callback(self, callback: object) -> None:
            registered.append(callback)
            super().add_on_set_parameters_callback(callback)  # type: ignore[arg-type]

    registered: List[object] = []
    fake = ScriptedLocator()
    domain_id, lock = reserve_domain_id()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id,
               signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = HumbleLikeNode(locator_factory=lambda config: fake, context=context)
        ours = [c for c in registered if "GraspLocator" in getattr(c, "__qualname__", "")]
        assert [c.__name__ for c in ours] == ["check_then_apply"]  # type: ignore[attr-defined]
        assert node.settings.max_image_age == 2.0

        rejected = node.set_parameters([Parameter("max_image_age", value=-1.0)])
        assert not rejected[0].successful
        assert "max_image_age" in rejected[0].reason
        assert node.settings.max_image_age == 2.0
        assert node.get_parameter("max_image_age").value == 2.0

        accepted = node.set_parameters([Parameter("max_image_age", value=5.0),
                                        Parameter("continuous", value=True)])
        assert all(r.successful for r in accepted)
        assert node.settings.max_image_age == 5.0
        assert node.settings.continuous is True
        assert node.get_parameter("max_image_age").value == 5.0
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        lock.close()
