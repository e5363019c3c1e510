"""Architecture rules that are cheap to check by reading the code.

* Pure cores never import IO, clocks or the global random (STYLE.md, "Shape").
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
PURE_MODULES = [
    *sorted(f"membership/{p.name}" for p in (ROOT / "membership").glob("*.py")),
    *sorted(f"auction/{p.name}" for p in (ROOT / "auction").glob("*.py")),
    "envelope.py",
    "units.py",
    "identity/pki.py",
    "identity/token.py",
    "identity/revocation.py",
    "names.py",
    "dht/record.py",
    "dht/storage.py",
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


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_cores_import_no_io(module: str) -> None:
    bad = _imports(ROOT / module) & FORBIDDEN_IN_CORES
    assert not bad, f"{module} is a pure core but imports {sorted(bad)}"


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

    app = Api(_Stub()).app()  # type: ignore[arg-type]
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    described = {(m, p) for p, ops in document()["paths"].items() for m in ops}
    assert served == described
