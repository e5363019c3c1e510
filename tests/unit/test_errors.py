"""The error hierarchy: one place, every class with its HTTP status and a docstring.

The API answers a :class:`MeshdError` with ``exc.http_status``; the table here is the
mapping operators see (it is the one the API's former isinstance ladder produced), and
the API test at the end checks the middleware really answers with it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import meshd
from meshd import config, errors
from meshd.api.server import Api
from meshd.errors import MeshdError
from meshd.metrics import Registry


def _subclasses(cls: type[MeshdError]) -> Iterator[type[MeshdError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _all_errors() -> list[type[MeshdError]]:
    """Every MeshdError subclass defined anywhere in meshd (so every module is loaded)."""
    for mod in pkgutil.walk_packages(meshd.__path__, "meshd."):
        if mod.name != "meshd.__main__":  # runs the CLI on import
            importlib.import_module(mod.name)
    found = {c for c in _subclasses(MeshdError) if c.__module__.startswith("meshd.")}
    return sorted(found, key=lambda c: c.__qualname__)


ALL = _all_errors()

STATUS = {
    errors.MeshdError: 400,
    errors.ConfigError: 400,
    errors.IdentityError: 403,
    errors.TokenError: 403,
    errors.EnrolmentError: 409,
    errors.RevokedError: 403,
    errors.EnvelopeError: 400,
    errors.ReplayError: 400,
    errors.UnknownAuthorError: 400,
    errors.MisaddressedError: 400,
    errors.UnknownKeyError: 400,
    errors.StoreError: 503,
    errors.DaemonError: 503,
    errors.BadRequest: 400,
    errors.NotFoundError: 404,
    errors.ApiError: 400,
    errors.NamingError: 400,
    errors.DiscoveryError: 400,
    errors.PlacementError: 409,
    errors.FencingError: 409,
    errors.DriverError: 400,
    errors.FirecrackerApiError: 400,
    errors.DhtError: 400,
    errors.RecordError: 400,
    errors.NetworkError: 400,
    errors.NetworkConflictError: 409,
    errors.AddressError: 400,
    errors.AddressConflictError: 409,
    errors.NetworkFullError: 409,
}


def _instance(cls: type[MeshdError]) -> MeshdError:
    if cls is errors.RecordError:
        return errors.RecordError("malformed", "a sentence")
    if cls is errors.UnknownAuthorError:
        return errors.UnknownAuthorError("ab" * 20)
    if cls is errors.UnknownKeyError:
        return errors.UnknownKeyError(b"\x01\x02\x03\x04")
    return cls("a sentence")


def test_the_walk_finds_the_whole_hierarchy() -> None:
    assert len(ALL) >= 20
    assert errors.PlacementError in ALL and errors.RecordError in ALL


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_declares_a_status_and_says_when_it_is_raised(
    cls: type[MeshdError],
) -> None:
    # Declared on the class itself, not inherited: whoever adds an error decides.
    assert "http_status" in vars(cls), f"{cls.__name__} does not declare http_status"
    assert isinstance(cls.http_status, int) and 400 <= cls.http_status <= 599
    assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} has no docstring"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_is_defined_in_meshd_errors(cls: type[MeshdError]) -> None:
    assert cls.__module__ == "meshd.errors", (
        f"{cls.__module__}.{cls.__name__}: define errors in meshd/errors.py"
    )


def test_the_table_covers_every_error() -> None:
    assert set(ALL) | {MeshdError} == set(STATUS)


@pytest.mark.parametrize(("cls", "status"), STATUS.items(), ids=lambda v: getattr(v, "__name__", v))
def test_status_table(cls: type[MeshdError], status: int) -> None:
    assert cls.http_status == status
    assert _instance(cls).http_status == status


async def test_the_api_answers_each_error_with_its_status() -> None:
    async def raising(request: web.Request) -> web.Response:
        raise _instance(next(c for c in STATUS if c.__name__ == request.match_info["name"]))

    node = SimpleNamespace(metrics=Registry(), cfg=config.local())
    app = Api(node).app()  # type: ignore[arg-type]
    app.router.add_get("/raise/{name}", raising)
    async with TestClient(TestServer(app)) as client:
        for cls, status in STATUS.items():
            resp = await client.get(f"/raise/{cls.__name__}")
            body = await resp.json()
            assert (resp.status, body) == (status, {"error": str(_instance(cls))}), cls
