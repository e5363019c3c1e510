"""The BMC endpoint as a value: checks with readable errors, and no password in sight."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from meshd.core.bmc import Attempt, BmcEndpoint, FenceOutcome, only_system, system_path
from meshd.errors import ConfigError
from meshd.identity import bmc as bmc_files
from meshd.identity import pki
from tests.unit.pki_fixtures import mesh

PW = "hunter2-bmc-secret"


def ep(**kw: object) -> BmcEndpoint:
    args: dict[str, object] = {"url": "https://ilo.lab:8443", "user": "admin", "password": PW}
    args.update(kw)
    return BmcEndpoint(**args)  # type: ignore[arg-type]


def test_the_password_is_in_no_printed_form() -> None:
    e = ep(system="1")
    for text in (repr(e), str(e), json.dumps(e.public()), f"{e}", f"{e!r}"):
        assert PW not in text
    assert e.to_json()["password"] == PW  # only the stored form has it


@pytest.mark.parametrize(
    ("system", "path"),
    [
        (None, None),
        ("1", "/redfish/v1/Systems/1"),
        ("blade1", "/redfish/v1/Systems/blade1"),
        ("/redfish/v1/Systems/1", "/redfish/v1/Systems/1"),
        ("/redfish/v1/Systems/1/", "/redfish/v1/Systems/1"),
    ],
)
def test_system_by_id_or_uri(system: str | None, path: str | None) -> None:
    assert system_path(system) == path


@pytest.mark.parametrize(
    "system",
    ["/redfish/v1/Chassis/1", "/redfish/v1/Systems/", "a/b", "", "/redfish/v1/Systems/1/x"],
)
def test_a_bad_system_is_refused(system: str) -> None:
    with pytest.raises(ConfigError):
        system_path(system)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"url": "http://ilo.lab"}, "--insecure"),
        ({"url": "ftp://ilo.lab"}, "https://HOST"),
        ({"url": "https://admin:pw@ilo.lab"}, "not in the URL"),
        ({"url": "https://ilo.lab/redfish/v1"}, "--system"),
        ({"url": "https://ilo.lab:99999"}, "bad port"),
        ({"insecure": True, "ca_file": "/ca.pem"}, "not both"),
        ({"user": ""}, "user"),
        ({"password": ""}, "password"),
        ({"password": "a\nb"}, "one line"),
    ],
)
def test_validation_says_what_to_change(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        ep(**kw).validate()
    assert PW not in str(info.value)


def test_http_is_accepted_with_insecure() -> None:
    assert ep(url="http://ilo.lab", insecure=True).validate().base_url == "http://ilo.lab"


def test_from_json_round_trips_and_refuses_unknown_fields() -> None:
    e = ep(system="/redfish/v1/Systems/1", ca_file="/x/ca.pem")
    assert BmcEndpoint.from_json(e.to_json()) == e
    with pytest.raises(ConfigError, match="unknown"):
        BmcEndpoint.from_json({**e.to_json(), "passwd": "x"})
    with pytest.raises(ConfigError, match="insecure"):
        BmcEndpoint.from_json({**e.to_json(), "insecure": "yes"})


def test_only_system() -> None:
    assert only_system(["/redfish/v1/Systems/1"], "https://b") == "/redfish/v1/Systems/1"
    with pytest.raises(ConfigError, match="lists no systems"):
        only_system([], "https://b")
    with pytest.raises(ConfigError, match=r"has 2 systems \(/a, /b\); say which one"):
        only_system(["/a", "/b"], "https://b")


def test_an_outcome_names_its_result() -> None:
    tries = (Attempt("GET", "/redfish/v1/Systems/1", 200, None, 0.01),)
    assert FenceOutcome("/s", True, True, False, 0.1, tries, None).result == "already_off"
    assert FenceOutcome("/s", True, False, True, 0.1, tries, None).result == "verified_off"
    failed = FenceOutcome("/s", False, False, True, 0.1, tries, "no")
    assert failed.result == "failed"
    assert failed.as_json()["attempts"][0]["elapsed_ms"] == 10.0


def test_stored_0600_with_the_ca_copied_in(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.cert_pem(mesh().ca_cert))
    stored = bmc_files.save(tmp_path / "node", ep(ca_file=str(ca)))
    path = bmc_files.path(tmp_path / "node")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored.ca_file == str(tmp_path / "node" / "identity" / "bmc-ca.pem")
    ca.unlink()
    assert bmc_files.load(tmp_path / "node") == stored
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        bmc_files.load(tmp_path / "node")
    assert bmc_files.load(tmp_path / "other") is None


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        bmc_files.save(tmp_path / "node", ep(ca_file=str(junk)))
    with pytest.raises(ConfigError, match="can't read --ca-file"):
        bmc_files.save(tmp_path / "node", ep(ca_file=str(tmp_path / "missing.pem")))
    assert not bmc_files.path(tmp_path / "node").exists()
