"""The OpenAPI 3.1 description of the HTTP API, served at ``/v1/openapi.json``.

A test checks that every route the server registers is described here and that every
path described here is served, so the document can't drift from the code.
"""

from __future__ import annotations

from typing import Any

from meshd import __version__
from meshd.core import spec


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


_ERROR = {"$ref": "#/components/schemas/Error"}
_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

_NO_MEMBER = {"404": _ok("no such member in the roster", _ERROR)}
_NO_NETWORK = {"404": _ok("no such network", _ERROR)}


def _mesh_post(summary: str, media: str = "application/octet-stream") -> dict[str, Any]:
    """A mesh-internal route a member posts to (nodes only): 204 once accepted."""
    return {
        "summary": summary,
        "requestBody": {"content": {media: {}}},
        "responses": {"204": {"description": "accepted"}, **_ERRORS},
    }


_ERRORS = {
    "400": _ok("bad request", _ERROR),
    "401": _ok("no client certificate (TCP only)", _ERROR),
    "403": _ok("refused: revoked, wrong role, or a bad token", _ERROR),
    "413": _ok("the request body is larger than the route takes", _ERROR),
    "503": _ok("not ready yet, or the store is busy: retry", _ERROR),
    "504": _ok("the request took longer than api.request_timeout_s", _ERROR),
}
# The lifecycle routes of one workload: it may be unknown, or its owner unreachable.
_WORKLOAD_ERRORS = {
    **_ERRORS,
    "404": _ok("no such workload", _ERROR),
    "409": _ok("not possible in the workload's state", _ERROR),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "one sentence"}},
    },
    "Resources": {
        "type": "object",
        "properties": {
            "cpus": {"type": "number"},
            "memory": {"type": "integer", "description": "bytes"},
            "disk": {"type": "integer", "description": "bytes"},
        },
    },
    "Node": {
        "type": "object",
        "required": ["name", "domain", "node_id", "address", "uptime_s"],
        "properties": {
            "name": {"type": "string"},
            "domain": {"type": "string"},
            "node_id": {"type": "string", "description": "160-bit id, hex"},
            "address": {"type": "string", "description": "mesh HOST:PORT peers use"},
            "listen": {"type": "string"},
            "uptime_s": {"type": "number"},
            "started_at": {"type": "number"},
            "version": {"type": "string"},
            "preset": {"type": "string"},
            "role": {"type": "string"},
            "witness": {"type": "boolean"},
            "draining": {"type": "boolean"},
            "ca_holder": {"type": "boolean"},
            "ca_fingerprint": {"type": "string"},
            "capacity": {"$ref": "#/components/schemas/Resources"},
            "allocated": {"$ref": "#/components/schemas/Resources"},
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "members_alive": {"type": "integer"},
            "roster_size": {"type": "integer"},
            "key_epoch": {"type": "integer"},
            "rss_bytes": {"type": "integer"},
            "store": {
                "type": "object",
                "description": "whether the store can write; while it can't, the node "
                "refuses bids, awards and submissions, and problem says why",
                "properties": {
                    "writable": {"type": "boolean"},
                    "problem": {"type": ["string", "null"]},
                    "since": {"type": ["number", "null"]},
                },
            },
        },
    },
    "Peer": {
        "type": "object",
        "required": ["name", "address", "state", "incarnation"],
        "properties": {
            "name": {"type": "string"},
            "address": {"type": "string"},
            "state": {
                "enum": ["alive", "suspect", "dead", "fencing", "fenced", "fence-failed", "left"]
            },
            "incarnation": {"type": "integer"},
            "node_id": {"type": "string"},
            "draining": {"type": "boolean"},
        },
    },
    "Instance": {
        "type": "object",
        "properties": {
            "service": {"type": "string"},
            "node": {"type": "string"},
            "address": {"type": "string"},
            "port": {"type": "integer"},
            "proto": {"enum": ["tcp", "udp"]},
        },
    },
    "WorkloadView": {
        "type": "object",
        "required": ["workload", "name", "owner", "generation", "state", "spec"],
        "properties": {
            "workload": {"type": "string"},
            "name": {"type": "string"},
            "owner": {"type": "string"},
            "generation": {"type": "integer"},
            "state": {"type": "string"},
            "detail": {"type": "string"},
            "tenant": {"type": ["string", "null"]},
            "local": {"type": "boolean"},
            "originator": {"type": "string"},
            "decided_at": {"type": "number"},
            "addresses": {"type": "array", "items": {"$ref": "#/components/schemas/NicAddress"}},
            "spec": {"$ref": "#/components/schemas/WorkloadSpec"},
        },
    },
    # A NIC's address, fixed before the auction by a majority of the roster (issue 13).
    "NicAddress": {
        "type": "object",
        "required": ["network", "ip", "mac"],
        "properties": {
            "network": {"type": "string"},
            "ip": {"type": "string"},
            "mac": {"type": "string"},
        },
    },
    "Decision": {
        "type": "object",
        "properties": {
            "workload": {"type": "string"},
            "name": {"type": "string"},
            "owner": {"type": "string"},
            "round": {"type": "string"},
            "generation": {"type": "integer"},
            "decided_ms": {"type": "number"},
            "bids": {"type": "array"},
            "addresses": {"type": "array", "items": {"$ref": "#/components/schemas/NicAddress"}},
        },
    },
    "Member": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "node_id": {"type": "string"},
            "role": {"type": "string"},
            "address": {"type": ["string", "null"]},
            "enrolled_at": {"type": "number"},
            "removed_at": {"type": ["number", "null"]},
        },
    },
}


def document() -> dict[str, Any]:
    json_obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meshd API",
            "version": __version__,
            "description": "The node API: served on DATA_DIR/meshd.sock and, with a client "
            "certificate from the mesh CA, on the mesh TCP port.",
        },
        "paths": {
            "/v1/health": {
                "get": {
                    "summary": "Liveness and readiness of this node",
                    "responses": {
                        "200": _ok("healthy", json_obj),
                        "503": _ok("a check failed", json_obj),
                    },
                }
            },
            "/v1/node": {
                "get": {
                    "summary": "This node: identity, address, uptime, capacity, allocation",
                    "responses": {
                        "200": _ok("this node", {"$ref": "#/components/schemas/Node"}),
                        **_ERRORS,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _ok("OpenAPI", json_obj)}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format 0.0.4)",
                    "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
                }
            },
            "/v1/roster": {
                "get": {
                    "summary": "Every node enrolled in the mesh, removed ones included",
                    "responses": {
                        "200": _ok(
                            "roster",
                            {"type": "array", "items": {"$ref": "#/components/schemas/Member"}},
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/v1/roster/{name}": {
                "delete": {
                    "summary": "Remove (revoke) a node; CA holders only",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "reason", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _ok("revoked", json_obj), **_ERRORS},
                }
            },
            "/v1/nodes/{name}/drain": {
                "post": {
                    "summary": "Drain a member for maintenance: it bids on nothing and its "
                    "workloads are auctioned elsewhere (local operator or admin)",
                    "parameters": [_NAME_PARAM],
                    "responses": {"200": _ok("drain", json_obj), **_NO_MEMBER, **_ERRORS},
                },
                "get": {
                    "summary": "Whether a member is drained, and what is still placed on it",
                    "parameters": [_NAME_PARAM],
                    "responses": {"200": _ok("drain", json_obj), **_NO_MEMBER, **_ERRORS},
                },
            },
            "/v1/nodes/{name}/undrain": {
                "post": {
                    "summary": "Let a drained member bid again (local operator or admin)",
                    "parameters": [_NAME_PARAM],
                    "responses": {"200": _ok("drain", json_obj), **_NO_MEMBER, **_ERRORS},
                }
            },
            "/v1/tokens": {
                "post": {
                    "summary": "Create a single-use join token; CA holders only",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "ttl_s": {"type": "number"},
                                        "seeds": {"type": "array", "items": {"type": "string"}},
                                        "replace": {
                                            "type": "string",
                                            "description": "a removed node's name the "
                                            "token lets a new node take",
                                        },
                                    },
                                }
                            }
                        }
                    },
                    "responses": {"200": _ok("the token", json_obj), **_ERRORS},
                }
            },
            "/v1/events": {
                "get": {
                    "summary": "This node's event log, oldest first; with follow=1, a stream "
                    "of JSON lines (application/x-ndjson) that goes on with each new event",
                    "parameters": [
                        {"name": "since", "in": "query", "schema": {"type": "integer"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                        {
                            "name": "follow",
                            "in": "query",
                            "schema": {"type": "boolean"},
                        },
                    ],
                    "responses": {"200": _ok("events", {"type": "array"}), **_ERRORS},
                }
            },
            "/v1/peers": {
                "get": {
                    "summary": "The membership view: every member, its address and state",
                    "responses": {
                        "200": _ok(
                            "members",
                            {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}},
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/v1/services": {
                "get": {
                    "summary": "Services this node publishes",
                    "responses": {"200": _ok("services", {"type": "array"}), **_ERRORS},
                },
                "post": {
                    "summary": "Publish a service of this node as @NAME@node@domain",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["name", "port"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "port": {"type": "integer"},
                                        "proto": {"enum": ["tcp", "udp"]},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {"200": _ok("published", json_obj), **_ERRORS},
                },
            },
            "/v1/services/{name}": {
                "delete": {
                    "summary": "Withdraw a service of this node",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok("withdrawn", json_obj),
                        "404": _ok("no such service", _ERROR),
                        **_ERRORS,
                    },
                }
            },
            "/v1/resolve": {
                "get": {
                    "summary": "Resolve @svc@node@domain, @svc@*@domain or @svc@domain",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok(
                            "instances",
                            {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}},
                        ),
                        "404": _ok("nothing found", _ERROR),
                        **_ERRORS,
                    },
                }
            },
            "/v1/mesh/message": {
                "post": _mesh_post("Mesh-internal: a membership message sent reliably (nodes only)")
            },
            "/v1/mesh/revocations": {
                "post": _mesh_post(
                    "Mesh-internal: CA-signed removals, pushed for anti-entropy (nodes only)"
                )
            },
            "/v1/mesh/certs": {
                "get": {
                    "summary": "Mesh-internal: every member's certificate (PEM), for a "
                    "node meeting many members at once (nodes only)",
                    "responses": {
                        "200": {
                            "description": "the certificates",
                            "content": {"application/x-pem-file": {}},
                        },
                        **_ERRORS,
                    },
                },
            },
            "/v1/mesh/keys": {
                "post": {
                    "summary": "Mesh-internal: a rotated mesh key (CA-signed) with the "
                    "removals behind it, pushed to each member (nodes only)",
                    "requestBody": {"content": {"application/octet-stream": {}}},
                    "responses": {"204": {"description": "accepted"}, **_ERRORS},
                },
                "get": {
                    "summary": "Mesh-internal: the removals and the mesh keys, for a member "
                    "that missed a rotation (nodes only)",
                    "responses": {
                        "200": {
                            "description": "the bundle",
                            "content": {"application/octet-stream": {}},
                        },
                        **_ERRORS,
                    },
                },
            },
            "/v1/workloads": {
                "post": {
                    "summary": "Place a workload by auction from this node; waits for the decision",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SubmitRequest"}
                            }
                        }
                    },
                    "responses": {
                        "200": _ok("placed", {"$ref": "#/components/schemas/Decision"}),
                        **_ERRORS,
                        "404": _ok("a NIC names no known network", _ERROR),
                        "409": _ok(
                            "not placed (no node could take it; a NIC's fixed address is "
                            "taken, its pool is full, or no majority granted an address): "
                            "the sentence says why",
                            _ERROR,
                        ),
                    },
                },
                "get": {
                    "summary": "The mesh-wide placement view as this node knows it",
                    "responses": {"200": _ok("workloads", {"type": "array"}), **_ERRORS},
                },
            },
            "/v1/workloads/{id}": {
                "get": {
                    "summary": "One workload as this node's view holds it: spec, owner, state",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _ok("the workload", {"$ref": "#/components/schemas/WorkloadView"}),
                        "404": _ok("no such workload", _ERROR),
                        **_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Remove a workload mesh-wide; its owner stops and destroys it",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _ok("removed", json_obj),
                        "404": _ok("no such workload", _ERROR),
                        **_ERRORS,
                    },
                },
            },
            "/v1/workloads/{id}/stop": {
                "post": {
                    "summary": "Stop a workload (on its owner; forwarded there from any node)",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "timeout", "in": "query", "schema": {"type": "number"}},
                    ],
                    "responses": {"200": _ok("its state", json_obj), **_WORKLOAD_ERRORS},
                }
            },
            "/v1/workloads/{id}/start": {
                "post": {
                    "summary": "Start a stopped workload again (on its owner)",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": _ok("its state", json_obj), **_WORKLOAD_ERRORS},
                }
            },
            "/v1/workloads/{id}/logs": {
                "get": {
                    "summary": "The workload's console or stdout/stderr; follow=1 streams",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": {
                        "200": {"description": "text", "content": {"text/plain": {}}},
                        **_WORKLOAD_ERRORS,
                    },
                }
            },
            "/v1/auctions": {
                "get": {
                    "summary": "Auction rounds this node ran or took part in",
                    "responses": {"200": _ok("rounds", {"type": "array"}), **_ERRORS},
                }
            },
            "/v1/auctions/{round}": {
                "get": {
                    "summary": "One round (or auction) with every bid and the winner",
                    "parameters": [
                        {
                            "name": "round",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok("round", json_obj),
                        "404": _ok("unknown round", _ERROR),
                        **_ERRORS,
                    },
                }
            },
            "/v1/mesh/auction": {
                "post": _mesh_post("Mesh-internal: an auction message sent reliably (nodes only)")
            },
            "/v1/mesh/drains": {
                "post": _mesh_post("Mesh-internal: signed drain records, push-pull (nodes only)")
            },
            "/v1/mesh/networks": {
                "post": _mesh_post("Mesh-internal: signed network records, push-pull (nodes only)")
            },
            "/v1/networks": {
                "post": {
                    "summary": "Define a mesh-wide network (local operator or admin); 409 if "
                    "its name is taken or its subnet overlaps a live network",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["name", "subnet"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "subnet": {"type": "string"},
                                        "gateway": {"type": "string"},
                                        "bridge": {"type": "string"},
                                        "vlan": {"type": "integer"},
                                        "dns": {"type": "array", "items": {"type": "string"}},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "201": _ok("network", json_obj),
                        "409": _ok("the name is taken or the subnet overlaps", _ERROR),
                        **_ERRORS,
                    },
                },
                "get": {
                    "summary": "The mesh's live networks",
                    "responses": {"200": _ok("networks", json_obj), **_ERRORS},
                },
            },
            "/v1/networks/{name}": {
                "get": {
                    "summary": "One network; what holds its addresses (holder, ip, mac, state)",
                    "parameters": [_NAME_PARAM],
                    "responses": {"200": _ok("network", json_obj), **_NO_NETWORK, **_ERRORS},
                },
                "delete": {
                    "summary": "Remove a network (local operator or admin); 409 while live "
                    "workloads or nodes hold addresses on it",
                    "parameters": [_NAME_PARAM],
                    "responses": {
                        "200": _ok("removed", json_obj),
                        "409": _ok("still in use: the sentence names the users", _ERROR),
                        **_NO_NETWORK,
                        **_ERRORS,
                    },
                },
            },
            "/v1/enrol/ca": {
                "get": {
                    "summary": "The mesh CA certificate (joiners check it by fingerprint)",
                    "security": [],
                    "responses": {"200": _ok("CA certificate, PEM", json_obj)},
                }
            },
            "/v1/enrol": {
                "post": {
                    "summary": "Enrol a new node with a join token and a CSR",
                    "security": [],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["token", "csr"],
                                    "properties": {
                                        "token": {"type": "string"},
                                        "csr": {"type": "string", "description": "PEM"},
                                        "address": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _ok("certificate, CA, mesh secret, roster", json_obj),
                        "400": _ok("malformed request", _ERROR),
                        "413": _ok("the request body is too large", _ERROR),
                        "403": _ok("token refused", _ERROR),
                        "409": _ok("name taken or request refused", _ERROR),
                    },
                }
            },
            "/v1/ca/promote": {
                "post": {
                    "summary": "Make another member a CA holder (local operator or admin)",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["node"],
                                    "properties": {"node": {"type": "string"}},
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _ok("node, node_id, by, promoted_at", json_obj),
                        **_ERRORS,
                    },
                }
            },
            "/v1/ca/reload": {
                "post": {
                    "summary": "Load a CA key restored on disk (local operator or admin)",
                    "responses": {"200": _ok("ca_holder", json_obj), **_ERRORS},
                }
            },
            "/v1/mesh/ca": {
                "post": {
                    "summary": "Receive the CA key from a CA holder (mesh nodes only)",
                    "responses": {"200": _ok("node, node_id, ack", json_obj), **_ERRORS},
                }
            },
            "/v1/bmc": {
                "get": {
                    "summary": "This node's Redfish BMC, without its password "
                    "(local operator or admin)",
                    "responses": {
                        "200": _ok("configured, url, user, system, ca_file, insecure", json_obj),
                        **_ERRORS,
                    },
                },
                "post": {
                    "summary": "Set this node's Redfish BMC, stored 0600 before the answer "
                    "(local operator or admin); https unless insecure; the password is never "
                    "answered back",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["url", "user", "password"],
                                    "properties": {
                                        "url": {"type": "string"},
                                        "user": {"type": "string"},
                                        "password": {"type": "string", "writeOnly": True},
                                        "system": {"type": ["string", "null"]},
                                        "ca_file": {"type": ["string", "null"]},
                                        "insecure": {"type": "boolean"},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _ok("configured, url, user, system, ca_file, insecure", json_obj),
                        **_ERRORS,
                    },
                },
            },
            "/v1/fence": {
                "get": {
                    "summary": "Fence votes, decisions and their evidence, per node with a "
                    "fence episode (meshd fence status)",
                    "responses": {
                        "200": _ok(
                            "node, voters, needed, nodes: [{node, state, epoch, round, "
                            "coordinator, votes, needed, attempts, reachable, evidence}]",
                            json_obj,
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/v1/fence/confirm": {
                "post": {
                    "summary": "The operator's word that a node is off when its BMC can't "
                    "say (local operator or admin); only after a fence reached quorum and "
                    "failed; its workloads then run elsewhere",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["node"],
                                    "properties": {"node": {"type": "string"}},
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _ok("node, state", json_obj),
                        "409": _ok("the node is not fence-failed: nothing to confirm", _ERROR),
                        **_ERRORS,
                    },
                }
            },
            "/v1/mesh/fence": {
                "post": _mesh_post(
                    "Mesh-internal: a fencing outcome with its signed votes (nodes only)"
                )
            },
            "/v1/mesh/bmc": {
                "post": _mesh_post(
                    "Mesh-internal: a member shares its own BMC endpoint with "
                    "this node (nodes only; kept 0600; never answered back)",
                    "application/json",
                )
            },
            "/v1/bmc/check": {
                "post": {
                    "summary": "Reach this node's BMC and read its power state "
                    "(local operator or admin)",
                    "responses": {
                        "200": _ok(
                            "url, system, power_state, reachable, elapsed_ms, error, attempts",
                            json_obj,
                        ),
                        "404": _ok("no BMC is set for this node", _ERROR),
                        **_ERRORS,
                    },
                }
            },
        },
        "components": {
            # The workload model's schemas come from the model itself (meshd.core.spec).
            "schemas": {**_SCHEMAS, **spec.json_schemas()},
            "securitySchemes": {"meshCA": {"type": "mutualTLS"}},
        },
        "security": [{"meshCA": []}],
    }
