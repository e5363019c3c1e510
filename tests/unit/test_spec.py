"""The one workload model: strict decoding, a sentence for every refusal, stable wire form."""

from __future__ import annotations

import orjson
import pytest

from meshd.core import spec as s
from meshd.errors import BadRequest

OK = {"name": "web", "cpus": 2, "memory": 1 << 30}


def submit(**extra: object) -> s.SubmitRequest:
    return s.parse_submission(orjson.dumps({**OK, **extra}))


def test_a_minimal_submission_has_the_documented_defaults() -> None:
    r = submit()
    assert (r.driver, r.disk, r.restart, r.boot_timeout_s) == ("process", 0, "reschedule", None)
    assert r.spec().requirements() == frozenset({"driver:process"})


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"colour": "red"}, "unknown field `colour`"),
        ({"cpus": "2"}, "cpus: expected `float`"),
        ({"cpus": 0}, "cpus"),
        ({"cpus": 1e400}, "cpus"),
        ({"memory": 0}, "memory"),
        ({"memory": -1}, "memory"),
        ({"disk": 2**63}, "disk"),
        ({"driver": "vmware"}, "driver"),
        ({"restart": "always"}, "restart"),
        ({"services": [{"name": "http", "port": 0}]}, "port"),
        ({"services": [{"name": "http", "port": 80, "tls": True}]}, "unknown field `tls`"),
        ({"name": ""}, "name"),
        ({"name": "é" * 200}, "longer than 255 bytes"),
        ({"labels": {"rack": 7}}, "labels"),
        ({"boot_timeout_s": -1}, "boot_timeout_s"),
    ],
)
def test_a_bad_submission_is_refused_with_a_sentence_naming_the_field(
    extra: dict[str, object], says: str
) -> None:
    with pytest.raises(BadRequest, match="the workload is invalid") as info:
        submit(**extra)
    assert says in str(info.value)


@pytest.mark.parametrize("body", [b"", b"[", b"NaN", b'{"name": "w", "cpus": NaN, "memory": 1}'])
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        s.parse_submission(body)


def test_wire_form_round_trips_and_leaves_defaults_out() -> None:
    r = submit(
        driver="qemu",
        image="/img.qcow2",
        services=[{"name": "http", "port": 80}],
        nics=[{"network": "lan", "ip": "10.0.0.5"}],
        labels={"rack": "a"},
        requires=["kvm"],
        nodes=["n1", "n2"],
        restart="none",
    ).spec()
    wire = s.to_wire(r)
    assert "disk" not in wire and "env" not in wire
    assert s.from_wire(orjson.loads(orjson.dumps(wire))) == r
    assert s.loads(s.dumps(r)) == r
    assert r.requirements() == frozenset({"driver:qemu", "network:lan", "kvm"})


def test_from_wire_is_as_strict_as_the_api() -> None:
    with pytest.raises(ValueError, match="bad workload spec"):
        s.from_wire({**OK, "extra": 1})
    with pytest.raises(ValueError, match="bad workload spec"):
        s.from_wire({**OK, "cpus": float("nan")})


def test_the_idempotency_key_is_not_part_of_the_spec() -> None:
    r = submit(idempotency_key="k1")
    assert r.idempotency_key == "k1"
    assert "idempotency_key" not in s.to_wire(r.spec())


def test_schemas_describe_every_field_the_model_accepts() -> None:
    schemas = s.json_schemas()
    props = schemas["SubmitRequest"]["properties"]
    assert set(props) == set(s.SubmitRequest.__struct_fields__)
    assert schemas["SubmitRequest"].get("additionalProperties") is False


def test_empty_constraints_from_json_are_left_out_of_the_wire_form() -> None:
    r = submit(nodes=[], avoid=[], requires=[], anti_affinity=[], labels={}, services=[])
    assert s.to_wire(r.spec()) == {"name": "web", "cpus": 2.0, "memory": 1 << 30}
    assert s.submission_json(r) == {"name": "web", "cpus": 2.0, "memory": 1 << 30}
