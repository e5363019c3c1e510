"""The one workload model: what an operator asks the mesh to run, defined once.

Theory of operation
-------------------
A :class:`WorkloadSpec` is everything a workload *is*: its resources, its driver and
what the driver boots or runs, its services, its NICs, where it may run
(requirements and constraints) and what happens when its node dies (``restart``).
It is written here and nowhere else; every other part reads it:

* the API decodes a submission straight into :class:`SubmitRequest` (the spec plus
  an idempotency key): an unknown field, a wrong type or an out-of-range value is
  refused with one sentence naming the field, never ignored;
* the OpenAPI document's request and response schemas are generated from these
  classes (:func:`json_schemas`), so the document can't drift from the code;
* the CLI builds a :class:`SubmitRequest` and so checks a submission before sending it;
* the auction carries the spec in every award and in every placement of the
  replicated view (:mod:`meshd.core.auction.model`), so every live node can tell what any
  workload is and a survivor can re-place a dead node's workloads unchanged;
* the drivers read it (``meshd.adapters.drivers``) and keep it as ``spec.json`` beside the
  workload's files.

A spec never changes once submitted: a re-placement at the next generation carries
the same spec. Its wire form is :func:`to_wire` / :func:`from_wire` (plain JSON
types, defaults left out), decoded as strictly as a submission, because it arrives
from peers too.

msgspec does the validation: it decodes and checks in one pass in C (measured in
``benchmarks/bench_spec.py``), and it writes the JSON schemas.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from meshd.core.nic import MAX_NICS
from meshd.errors import BadRequest

MAX_NAME = 255  # bytes of a name, tenant, label, capability or network
MAX_COUNT = 2**63 - 1  # sizes: a signed 64-bit integer
MAX_CPUS = 1_000_000
MAX_TEXT = 256 * 1024  # bytes of one text setting (user-data is the large one)
# ``fake`` runs nothing: the simulator's and tests' in-memory driver. No real node
# advertises it, so the auction refuses it anywhere else ("no node has driver:fake").
DRIVERS = ("process", "qemu", "firecracker", "fake")
RESTART_POLICIES = ("reschedule", "none")

Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
_EMPTY: frozenset[str] = frozenset()
_SET_FIELDS = ("nodes", "avoid", "requires", "anti_affinity")
Size = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]


def _check_bytes(field: str, value: str | None, limit: int = MAX_NAME) -> None:
    """Names are bounded in UTF-8 bytes (what the wire and the store hold), and a lone
    surrogate (which JSON lets through) is refused."""
    if value is None:
        return
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{field} is not valid UTF-8 text") from None
    if size > limit:
        raise ValueError(f"{field} is longer than {limit} bytes")


class Service(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A service the workload offers, published as ``@name@node@domain`` while it runs."""

    name: Name
    port: Annotated[int, Meta(ge=1, le=65535)]
    proto: Literal["tcp", "udp"] = "tcp"


class Nic(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A network interface on a mesh network; ``ip`` asks for a fixed address."""

    network: Name
    ip: Name | None = None


class WorkloadSpec(
    Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """What to run. Sizes are bytes, CPUs a fraction of cores, times seconds."""

    name: Name
    cpus: Annotated[float, Meta(gt=0, le=MAX_CPUS)]
    memory: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    disk: Size = 0
    driver: Literal["process", "qemu", "firecracker", "fake"] = "process"
    tenant: Name | None = None
    # What the driver runs: a command (process), a disk image or a kernel (qemu,
    # firecracker), cloud-init's NoCloud documents, and when the guest counts as booted.
    command: Text | None = None  # shlex-split, never through a shell
    env: dict[Name, Text] = {}
    image: Text | None = None
    kernel: Text | None = None
    initrd: Text | None = None
    cmdline: Text | None = None
    user_data: Text | None = None
    meta_data: Text | None = None
    network_config: Text | None = None
    ready_marker: Text | None = None
    # Seconds the guest has to print ``ready_marker``; None: the node's driver default
    # (``[drivers.qemu] boot_timeout_s`` or ``[drivers.firecracker]``, 60 s).
    boot_timeout_s: Annotated[float, Meta(gt=0, le=86400)] | None = None
    services: tuple[Service, ...] = ()
    nics: Annotated[tuple[Nic, ...], Meta(max_length=MAX_NICS)] = ()
    # Where it may run. ``nodes``: only these; ``avoid``: never these; ``labels``: only
    # on nodes whose operator set these labels; ``requires``: capabilities a node must
    # have (``kvm``, ``arch:x86_64``; the driver and each NIC's network are required
    # implicitly); ``anti_affinity``: never beside a workload of one of these names.
    nodes: frozenset[Name] = _EMPTY
    avoid: frozenset[Name] = _EMPTY
    labels: dict[Name, Name] = {}
    requires: frozenset[Name] = _EMPTY
    anti_affinity: frozenset[Name] = _EMPTY
    # What the mesh does when the owner is fenced: run it again elsewhere, or not.
    restart: Literal["reschedule", "none"] = "reschedule"

    def __post_init__(self) -> None:
        if not math.isfinite(self.cpus):  # Meta bounds already refuse NaN; be explicit
            raise ValueError("cpus must be a finite number")
        for f in _SET_FIELDS:
            if not getattr(self, f):
                # The shared empty frozenset, so the wire form leaves it out as a
                # default (msgspec compares a default by identity).
                msgspec.structs.force_setattr(self, f, _EMPTY)
        _check_bytes("name", self.name)
        _check_bytes("tenant", self.tenant)
        for group in (self.nodes, self.avoid, self.requires, self.anti_affinity, self.labels):
            for item in group:
                _check_bytes("a constraint", item)
        for key, value in self.labels.items():
            _check_bytes(f"label {key}", value)
        for svc in self.services:
            _check_bytes("a service name", svc.name)
        for nic in self.nics:
            _check_bytes("a NIC's network", nic.network)

    def requirements(self) -> frozenset[str]:
        """Capabilities a node must advertise to bid (:mod:`meshd.core.auction.capabilities`)."""
        implied = {f"driver:{self.driver}"} | {f"network:{n.network}" for n in self.nics}
        return self.requires | implied


class SubmitRequest(WorkloadSpec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/workloads``: a spec, and a key that makes a retried submission safe."""

    # The same key sent to the same node names the same workload: a retry after a lost
    # answer places nothing twice.
    idempotency_key: Name | None = None

    def spec(self) -> WorkloadSpec:
        fields = {f: getattr(self, f) for f in WorkloadSpec.__struct_fields__}
        return WorkloadSpec(**fields)


_submit_decoder = msgspec.json.Decoder(SubmitRequest)


def parse_submission(body: bytes) -> SubmitRequest:
    """A submission from the API; :class:`BadRequest` with one sentence if it is wrong."""
    try:
        return _submit_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"the workload is invalid: {_sentence(exc)}") from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def check(doc: dict[str, Any]) -> SubmitRequest:
    """A submission built in Python (the CLI), checked exactly as the API checks it."""
    try:
        return msgspec.convert(doc, SubmitRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"the workload is invalid: {_sentence(exc)}") from exc


def submission_json(request: SubmitRequest) -> dict[str, Any]:
    """A checked submission as the JSON object the API takes (defaults left out)."""
    out: dict[str, Any] = msgspec.to_builtins(request)
    return out


def _sentence(exc: Exception) -> str:
    text = str(exc)
    # msgspec says "Object contains unknown field `x`" or "Expected `int`, got `str` -
    # at `$.memory`"; turn the path into the field's name, which the operator typed.
    if " - at `$." in text:
        what, _, where = text.partition(" - at `$.")
        return f"{where.rstrip('`')}: {what[0].lower()}{what[1:]}"
    return text[0].lower() + text[1:] if text else "invalid"


def to_wire(spec: WorkloadSpec) -> dict[str, Any]:
    """Plain JSON types, defaults left out (what peers and the store exchange)."""
    out: dict[str, Any] = msgspec.to_builtins(spec)
    return out


def from_wire(obj: Any) -> WorkloadSpec:
    """Strictly decode a peer's or the store's spec; ``ValueError`` if it is not one."""
    try:
        return msgspec.convert(obj, WorkloadSpec)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad workload spec: {exc}") from exc


_encoder = msgspec.json.Encoder()


def dumps(spec: WorkloadSpec) -> bytes:
    return _encoder.encode(spec)


def loads(data: bytes) -> WorkloadSpec:
    try:
        return msgspec.json.decode(data, type=WorkloadSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"bad workload spec: {exc}") from exc


def json_schemas() -> dict[str, Any]:
    """OpenAPI component schemas for the model (``#/components/schemas/...``)."""
    _, components = msgspec.json.schema_components(
        [SubmitRequest, WorkloadSpec], ref_template="#/components/schemas/{name}"
    )
    return components
