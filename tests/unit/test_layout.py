"""Architecture rules that are cheap to check by reading the code.

* Pure cores never import IO, clocks or the global random (STYLE.md, "Shape"), not
  even through another meshd module they import.
* No import circle anywhere in meshd: every import counts, those inside functions and
  under ``TYPE_CHECKING`` too (they only hide a circle).
* No pickle anywhere in meshd.
* Every route the API serves is in the OpenAPI document, and the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshd
from meshd.api.openapi import document
from meshd.api.server import Api

ROOT = Path(meshd.__file__).parent
# Everything under core/ is pure, and so are these helpers the cores and the DHT use.
PURE_MODULES = [
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py")),
    "units.py",
    "identity/pki.py",
    "identity/token.py",
    "identity/revocation.py",
    "adapters/dht/record.py",
    "adapters/dht/storage.py",
]
FORBIDDEN_IN_CORES = {
    "asyncio",
    "socket",
    "apsw",
    "aiohttp",
    "time",
    "zeroconf",
    "psutil",
    "threading",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_of(p): p for p in ROOT.rglob("*.py")}


def _meshd_imports(path: Path) -> set[str]:
    """The meshd modules ``path`` imports, wherever the import stands in the file.

    ``from meshd.pkg import name`` counts as importing ``meshd.pkg.name`` when that is a
    module, else ``meshd.pkg`` (the package's ``__init__``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "meshd")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "meshd":
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES}


GRAPH = {m: _meshd_imports(p) for m, p in MODULES.items()}


def _closure(module: str) -> set[str]:
    seen, todo = {module}, [module]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_cores_import_no_io(module: str) -> None:
    bad = _imports(ROOT / module) & FORBIDDEN_IN_CORES
    assert not bad, f"{module} is a pure core but imports {sorted(bad)}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_cores_reach_no_io_through_other_modules(module: str) -> None:
    for dep in sorted(_closure(_module_of(ROOT / module))):
        bad = _imports(MODULES[dep]) & FORBIDDEN_IN_CORES
        assert not bad, f"{module} is a pure core but reaches {sorted(bad)} through {dep}"


def test_no_import_circle_in_meshd() -> None:
    # Tarjan's strongly connected components: any with two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                circles.append(sorted(scc))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not circles, f"import circles: {circles}"


def test_the_circle_check_finds_a_circle() -> None:
    """The check above is only worth something if it can fail."""
    saved = dict(GRAPH)
    try:
        GRAPH["meshd.errors"] = {"meshd.shell.node"}
        with pytest.raises(AssertionError, match="import circles"):
            test_no_import_circle_in_meshd()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


# The only attributes a pure core may use of these modules: the OS CSPRNG (keys,
# nonces, token ids) and the type of the seeded generator passed in.
ALLOWED_ATTRIBUTES = {"os": {"urandom"}, "random": {"Random"}}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_cores_use_os_and_random_only_as_allowed(module: str) -> None:
    for node in ast.walk(ast.parse((ROOT / module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in ALLOWED_ATTRIBUTES:
            pytest.fail(f"{module} imports names from {node.module}")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ALLOWED_ATTRIBUTES
        ):
            allowed = ALLOWED_ATTRIBUTES[node.value.id]
            assert node.attr in allowed, f"{module} uses {node.value.id}.{node.attr}"


def test_no_pickle_anywhere() -> None:
    for path in ROOT.rglob("*.py"):
        assert "pickle" not in _imports(path), f"{path} imports pickle"


def test_openapi_matches_routes() -> None:
    class _Stub:
        metrics = meshd.metrics.Registry()
        cfg = meshd.config.local()

    app = Api(_Stub()).app()  # type: ignore[arg-type]
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    described = {(m, p) for p, ops in document()["paths"].items() for m in ops}
    assert served == described
