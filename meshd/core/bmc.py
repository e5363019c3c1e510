"""A node's BMC as values: where it is, how to log in, and what fencing it found.

Theory of operation
-------------------
DESIGN.md §7: the fencing coordinator powers a dead node off through its Redfish BMC
and only a verified ``Off`` counts. This module holds what every side of that shares
and nothing that does IO, so the pure fencing core, the simulator's fake BMC
(``tests/sim/bmc.py``) and the aiohttp client (``meshd.adapters.redfish``) speak the
same values:

* :class:`BmcEndpoint`: URL, user, password (never in ``repr``/``str``: it is kept out
  of every log line, answer and event by construction, and :meth:`BmcEndpoint.public`
  is the only form anything prints), the system (its Id, its full URI path, or None
  for the BMC's only one), and TLS trust (a CA file, the system store, or ``insecure``
  said explicitly);
* :class:`Attempt`: one HTTP request and how it ended, for the store and the event log;
* :class:`PowerReading` and :class:`FenceOutcome`: what a power-state read and a
  ForceOff found. A failure is a value with a sentence that says what to do, never an
  exception and never a guess.

An operator would expect ``https`` with a verified certificate: a BMC login travels in
every request. ``http`` and an unverified certificate are accepted only with
``insecure`` (``meshd bmc set --insecure``), the same word that lets ``curl -k`` or
``fence_redfish --ssl-insecure`` skip verification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from meshd.errors import ConfigError

SYSTEMS_PATH = "/redfish/v1/Systems"
POWER_STATES = ("On", "Off", "PoweringOn", "PoweringOff", "Paused")
# A user or password longer than this is a mistake (a whole file pasted): refused.
MAX_CREDENTIAL_BYTES = 1024


@dataclass(frozen=True)
class BmcEndpoint:
    """One node's Redfish BMC. ``password`` is left out of ``repr`` and ``str``."""

    # Base URL of the BMC: scheme, host and port (``https://ilo-blade3.lab:443``).
    url: str
    user: str
    password: str = field(repr=False)
    # The system's Id (``1`` on iLO, a name or UUID on sushy-tools), its full URI path
    # (``/redfish/v1/Systems/<Id>``), or None: the BMC's only system.
    system: str | None = None
    # PEM file of the CA that signed the BMC's certificate; None: the system store.
    ca_file: str | None = None
    # Accept http and unverified certificates (said explicitly, never a fallback).
    insecure: bool = False

    def __str__(self) -> str:
        return f"{self.base_url} system={self.system or '(the only one)'}"

    @property
    def base_url(self) -> str:
        """``scheme://host[:port]``: what every path is joined to."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def system_path(self) -> str | None:
        """The URI path of the configured system, None when the BMC's only one is meant."""
        return system_path(self.system)

    def public(self) -> dict[str, Any]:
        """Everything but the password: what the API, events and logs may show."""
        return {
            "url": self.base_url,
            "user": self.user,
            "system": self.system,
            "ca_file": self.ca_file,
            "insecure": self.insecure,
        }

    def to_json(self) -> dict[str, Any]:
        """The stored form, password included: for the 0600 file only."""
        return {**self.public(), "password": self.password}

    @classmethod
    def from_json(cls, doc: Any) -> BmcEndpoint:
        """Decode and check a stored or posted endpoint; ConfigError names what is wrong."""
        if not isinstance(doc, dict):
            raise ConfigError("a BMC endpoint must be a JSON object")
        strings = ("url", "user", "password")
        for key in strings:
            if not isinstance(doc.get(key), str):
                raise ConfigError(f"a BMC endpoint needs {key} as a string")
        for key in ("system", "ca_file"):
            if doc.get(key) is not None and not isinstance(doc[key], str):
                raise ConfigError(f"the BMC endpoint's {key} must be a string")
        insecure = doc.get("insecure", False)
        if not isinstance(insecure, bool):
            raise ConfigError("the BMC endpoint's insecure must be true or false")
        unknown = set(doc) - {*strings, "system", "ca_file", "insecure"}
        if unknown:
            raise ConfigError(f"unknown BMC endpoint field(s): {', '.join(sorted(unknown))}")
        return cls(
            url=doc["url"],
            user=doc["user"],
            password=doc["password"],
            system=doc.get("system") or None,
            ca_file=doc.get("ca_file") or None,
            insecure=insecure,
        ).validate()

    def validate(self) -> BmcEndpoint:
        """Return self if usable; else ConfigError with a sentence saying what to change."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(
                f"the BMC URL must look like https://HOST[:PORT], got {self.url[:80]!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                "put the BMC's user in --user and its password in --password-file, not in the URL"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                "the BMC URL is the BMC's address only (https://HOST[:PORT]); "
                "name the system with --system"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"the BMC URL has a bad port: {self.url[:80]!r}") from None
        if parts.scheme == "http" and not self.insecure:
            raise ConfigError(
                "the BMC URL is plain http, which would send its password in clear; "
                "use https, or pass --insecure to accept that"
            )
        if self.insecure and self.ca_file is not None:
            raise ConfigError("give either --ca-file or --insecure, not both")
        if not self.user or len(self.user.encode()) > MAX_CREDENTIAL_BYTES:
            raise ConfigError(f"the BMC user must be 1 to {MAX_CREDENTIAL_BYTES} bytes")
        if not self.password or len(self.password.encode()) > MAX_CREDENTIAL_BYTES:
            raise ConfigError(f"the BMC password must be 1 to {MAX_CREDENTIAL_BYTES} bytes")
        if any(c in self.user + self.password for c in "\r\n\0"):
            raise ConfigError("the BMC user and password must be one line each")
        system_path(self.system)
        return self


def system_path(system: str | None) -> str | None:
    """``"1"`` or ``"/redfish/v1/Systems/1"`` → ``"/redfish/v1/Systems/1"``; None stays None."""
    if system is None:
        return None
    text = system.rstrip("/")
    if text.startswith("/"):
        prefix = SYSTEMS_PATH + "/"
        ident = text[len(prefix) :] if text.startswith(prefix) else ""
        if not ident or "/" in ident:
            raise ConfigError(
                f"a system URI must be {SYSTEMS_PATH}/<Id>, got {system[:80]!r}; "
                "or give the system's Id alone"
            )
        return text
    if not text or "/" in text or "?" in text or "#" in text or len(text) > 255:
        raise ConfigError(f"a system Id is one path segment, got {system[:80]!r}")
    return f"{SYSTEMS_PATH}/{text}"


def only_system(members: list[str], url: str) -> str:
    """The one system a BMC lists when none was named; ConfigError naming them otherwise."""
    if len(members) == 1:
        return members[0]
    if not members:
        raise ConfigError(f"the BMC at {url} lists no systems under {SYSTEMS_PATH}")
    shown = ", ".join(members[:8]) + (", ..." if len(members) > 8 else "")
    raise ConfigError(
        f"the BMC at {url} has {len(members)} systems ({shown}); "
        "say which one with --system ID or --system /redfish/v1/Systems/ID"
    )


@dataclass(frozen=True)
class Attempt:
    """One request to a BMC: what was asked and how it ended (never a credential)."""

    method: str
    path: str
    status: int | None  # the HTTP status, None when no answer came
    error: str | None  # why no usable answer came (timeout, refused, TLS, bad JSON)
    elapsed_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "error": self.error,
            "elapsed_ms": round(self.elapsed_s * 1000, 1),
        }


@dataclass(frozen=True)
class PowerReading:
    """What ``power_state`` found: the state, or why there is none."""

    system: str | None  # the system's URI path once found
    power_state: str | None
    reachable: bool  # the BMC answered over HTTP at all (even with an error)
    elapsed_s: float
    error: str | None
    attempts: tuple[Attempt, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "power_state": self.power_state,
            "reachable": self.reachable,
            "elapsed_ms": round(self.elapsed_s * 1000, 1),
            "error": self.error,
            "attempts": [a.as_json() for a in self.attempts],
        }


FenceResult = Literal["verified_off", "already_off", "failed"]


@dataclass(frozen=True)
class FenceOutcome:
    """What ``force_off`` did. Only ``verified_off`` (which ``already_off`` implies)
    may be taken as the node being off."""

    system: str | None
    verified_off: bool  # a PowerState read said Off (after the POST, or before any)
    already_off: bool  # it was Off at the first read: nothing was posted
    posted: bool  # a ForceOff POST was sent (whether or not it was answered)
    elapsed_s: float
    attempts: tuple[Attempt, ...]
    error: str | None  # the sentence when not verified_off

    @property
    def result(self) -> FenceResult:
        if self.already_off:
            return "already_off"
        return "verified_off" if self.verified_off else "failed"

    def as_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "system": self.system,
            "verified_off": self.verified_off,
            "already_off": self.already_off,
            "posted": self.posted,
            "elapsed_ms": round(self.elapsed_s * 1000, 1),
            "error": self.error,
            "attempts": [a.as_json() for a in self.attempts],
        }
