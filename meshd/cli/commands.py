"""What each ``meshd`` subcommand does. Parsing lives in ``main``, printing in ``output``.

A command imports what it needs inside its handler: the module level holds only the
standard library's light parts and the daemon client, so a command that asks a
running daemon (``status``, ``peers``) starts without the config's dataclasses, the
store, the identity's cryptography or aiohttp, and ``--help`` and ``--version``
without http.client either (``tests/unit/test_cli_imports.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meshd.cli import output
from meshd.data_dir import DATA_DIR_ENV, default_data_dir
from meshd.errors import BadRequest, ConfigError, IdentityError, NotFoundError, PlacementError
from meshd.units import format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from meshd.cli.client import DaemonClient
    from meshd.config import Config
    from meshd.config import files as config_files
    from meshd.identity import files

logger = logging.getLogger(__name__)
CONFIG_NAME = "meshd.toml"
DRAIN_RETRY_S = 15.0  # `node drain`: re-place what is left after this long without progress


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else default_data_dir()


def resolve_config(args: argparse.Namespace, **overrides: Any) -> config_files.Resolved:
    """Preset → config file (``--config``, else DATA_DIR/meshd.toml) → flags.

    ``overrides`` are the dedicated flags (``listen=args.listen``; None: not given);
    ``--set KEY=VALUE`` flags, where the command has them, come on top.
    """
    from meshd.config import files as config_files

    ddir = data_dir(args)
    path = Path(args.config) if getattr(args, "config", None) else ddir / CONFIG_NAME
    cfg_path = path if getattr(args, "config", None) or path.exists() else None
    labels: dict[str, str] = {}
    for item in getattr(args, "set", None) or []:
        key, value = config_files.parse_assignment(item)
        overrides[key] = value
    # The data dir is the flag's, else the environment's, else the preset's default.
    if args.data_dir:
        overrides["data_dir"] = ddir
    elif os.environ.get(DATA_DIR_ENV):
        overrides["data_dir"] = ddir
        labels["data_dir"] = f"env:{DATA_DIR_ENV}"
    return config_files.resolve(cfg_path, getattr(args, "preset", None), overrides, labels)


def load_config(args: argparse.Namespace, **overrides: Any) -> Config:
    return resolve_config(args, **overrides).config


def _listing(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Every listing: one JSON document with --json, else an aligned table."""
    if args.json:
        output.emit_json(rows)
    else:
        output.emit_table(rows, columns)


def client(args: argparse.Namespace) -> DaemonClient:
    from meshd.cli.client import DaemonClient  # http.client: not for --help or --version

    return DaemonClient(data_dir(args) / "meshd.sock")


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON strings and string lists are valid TOML values


def _write_node_config(ddir: Path, values: dict[str, Any]) -> None:
    path = ddir / CONFIG_NAME
    if path.exists():
        return
    lines = ["# Written by `meshd init`; flags to `meshd run` override these.\n"]
    lines += [f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v]
    path.write_text("".join(lines))


# -- init ----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    import asyncio

    from meshd.adapters import telemetry
    from meshd.adapters.store import roster
    from meshd.adapters.store.db import Store
    from meshd.identity import enrolment, files, pki

    cfg = load_config(args)
    ddir = cfg.data_dir
    if files.exists(ddir):
        raise IdentityError(
            f"{ddir} already holds a node identity; refusing to overwrite it "
            "(use another --data-dir)"
        )
    now = time.time()
    if args.join:
        # The key goes to disk before the CSR leaves: a join whose answer is lost can be
        # run again and gets the same certificate (enrolment.serve, "a retry").
        enrolment.check_join(args.join, args.name, args.domain, now)
        key = files.join_key(ddir)
        joined = asyncio.run(
            enrolment.join(
                args.join,
                args.name,
                args.domain,
                args.listen,
                cfg.security,
                now,
                key,
                on_refused=lambda: files.discard_join_key(ddir),
                addresses=telemetry.node_addresses(args.listen),
            )
        )
        ident, members, seeds = joined.identity, joined.members, joined.seeds
    else:
        if not args.domain:
            raise ConfigError("founding a mesh needs --domain (or pass --join TOKEN to join one)")
        pki.check_domain(args.domain)
        ident = enrolment.found(
            args.name, args.domain, cfg.security, now, telemetry.node_addresses(args.listen)
        )
        members, seeds = [enrolment.member_of(ident.cert, None, now)], ()
    files.save(ddir, ident)
    with Store.open(cfg.store_path) as store:
        store.set_meta("name", ident.name)
        store.set_meta("domain", ident.domain)
        store.set_meta("node_id", ident.node_id)
        store.set_meta("ca_fingerprint", ident.ca_fingerprint)
        store.set_meta("created_at", repr(now))
        for m in members:
            roster.upsert(store, m)
        if not any(m.name == ident.name for m in members):
            roster.upsert(store, enrolment.member_of(ident.cert, None, now))
        store.append_event(now, "node.initialised", ident.name, {"joined": bool(args.join)})
    _write_node_config(ddir, {"listen": args.listen, "seeds": list(seeds)})
    doc = {
        "name": ident.name,
        "domain": ident.domain,
        "node_id": ident.node_id,
        "ca_fingerprint": ident.ca_fingerprint,
        "ca_holder": ident.is_ca_holder,
        "data_dir": str(ddir),
        "joined": bool(args.join),
    }
    if args.json:
        output.emit_json(doc)
    else:
        verb = "joined" if args.join else "founded"
        output.emit_text(
            f"{verb} mesh {ident.domain} as {ident.name} (node id {ident.node_id[:12]}...); "
            f"start it with: meshd run --data-dir {ddir}"
        )
    return 0


# -- token, node, cert -----------------------------------------------------------------


def _ident(cfg: Config) -> files.NodeIdentity:
    from meshd.identity import files

    return files.load(cfg.data_dir, time.time())


def _require_identity(cfg: Config) -> None:
    from meshd.identity import files

    if not files.exists(cfg.data_dir):
        raise ConfigError(
            f"{cfg.data_dir} holds no node identity: check --data-dir (or $MESHD_DATA_DIR), "
            "or create one with `meshd init`"
        )


def cmd_token_create(args: argparse.Namespace) -> int:
    from meshd.adapters.store.db import Store
    from meshd.identity import authority

    cfg = load_config(args)
    ttl = parse_duration(args.ttl, "--ttl") if args.ttl else cfg.security.token_ttl_s
    if ttl <= 0:
        raise ConfigError("--ttl must be positive, e.g. 1h")
    ident = _ident(cfg)
    with Store.open(cfg.store_path) as store:
        seeds = tuple(args.seed) if args.seed else tuple(filter(None, [store.get_meta("address")]))
        tok, text = authority.issue_token(store, ident, seeds, ttl, time.time(), args.replace)
    if args.json:
        output.emit_json(
            {"token": text, "id": tok.id, "expires_at": tok.expires_at, "seeds": list(tok.seeds)}
        )
    else:
        output.emit_text(text)
    return 0


# -- bmc: set, check ------------------------------------------------------------------


def _password_file(name: str) -> str:
    """The BMC password from ``name``: private to its owner, not empty, one line."""
    path = Path(name)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"--password-file {name} is readable by group or others "
                f"(mode {mode & 0o777:o}); run `chmod 600 {name}`"
            )
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"can't read --password-file {name}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"--password-file {name} is not UTF-8 text") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(f"--password-file {name} is empty")
    if "\n" in password:
        raise ConfigError(f"--password-file {name} must hold the password on one line")
    return password


def cmd_bmc_set(args: argparse.Namespace) -> int:
    body = {
        "url": args.url,
        "user": args.user,
        "password": _password_file(args.password_file),
        "system": args.system,
        # The daemon reads and copies the CA file: give it a path from anywhere.
        "ca_file": str(Path(args.ca_file).absolute()) if args.ca_file else None,
        "insecure": bool(args.insecure),
    }
    doc = client(args).request("POST", "/v1/bmc", body)
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(
            f"this node's BMC is {doc['url']} (user {doc['user']}, "
            f"system {doc['system'] or 'the only one'}); run `meshd bmc check` to reach it"
        )
    return 0


def cmd_bmc_check(args: argparse.Namespace) -> int:
    doc = client(args).request("POST", "/v1/bmc/check")
    if args.json:
        output.emit_json(doc)
    else:
        keys = ("url", "system", "power_state", "reachable", "elapsed_ms")
        output.emit_fields({k: doc.get(k) for k in keys})
        if doc.get("error"):
            output.emit_error(str(doc["error"]))
    return 1 if doc.get("error") else 0


# -- fence: status, confirm ------------------------------------------------------------


def cmd_fence_status(args: argparse.Namespace) -> int:
    doc = client(args).request("GET", "/v1/fence")
    if args.json:
        output.emit_json(doc)
        return 0
    output.emit_text(
        f"voters {len(doc['voters'])} ({', '.join(doc['voters'])}); a fence needs {doc['needed']}"
    )
    rows = [
        {
            **row,
            "votes": f"{len(row['votes'])}/{row['needed']}",
            "evidence": row.get("evidence") or "",
        }
        for row in doc["nodes"]
    ]
    if rows:
        _listing(args, rows, ["node", "state", "epoch", "coordinator", "votes", "evidence"])
    else:
        output.emit_text("no node is being fenced or was fenced")
    return 0


def cmd_fence_confirm(args: argparse.Namespace) -> int:
    doc = client(args).request("POST", "/v1/fence/confirm", {"node": args.node})
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(f"{doc['node']} is {doc['state']}: its workloads are placed again")
    return 0


# -- ca: promote, backup, restore -----------------------------------------------------


def cmd_ca_promote(args: argparse.Namespace) -> int:
    doc = client(args).request("POST", "/v1/ca/promote", {"node": args.node})
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(
            f"{doc['node']} now holds the CA key: it can create tokens and remove nodes"
        )
    return 0


def _passphrase(args: argparse.Namespace, confirm: bool) -> bytes:
    import getpass

    if args.passphrase_file:
        try:
            text = Path(args.passphrase_file).read_text()
        except OSError as exc:
            raise ConfigError(
                f"can't read --passphrase-file {args.passphrase_file}: {exc.strerror}"
            ) from exc
        return text.rstrip("\n").encode()
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for the passphrase; pass --passphrase-file FILE")
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("passphrase again: ") != first:
        raise ConfigError("the two passphrases differ")
    return first.encode()


def cmd_ca_backup(args: argparse.Namespace) -> int:
    from meshd.identity import authority, custody, files

    cfg = load_config(args)
    ident = _ident(cfg)
    ca_key = authority.require_ca_key(ident, "back up the CA key")
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite a backup")
    blob = custody.seal_backup(ca_key, ident.ca_cert, _passphrase(args, confirm=True))
    files.write_private(out, blob)
    output.emit_text(
        f"wrote {out} (the CA key of {ident.domain}, sealed with the passphrase); "
        "keep it offline, apart from the passphrase"
    )
    return 0


def cmd_ca_restore(args: argparse.Namespace) -> int:
    from meshd.identity import custody, files

    cfg = load_config(args)
    ident = _ident(cfg)
    try:
        blob = Path(args.source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"can't read --from {args.source}: {exc.strerror}") from exc
    ca_key = custody.open_backup(blob, _passphrase(args, confirm=False), ident.ca_cert)
    if ident.ca_key is not None:  # a holder checking its backup: nothing to write
        output.emit_text(f"{args.source} opens and holds this mesh's CA key; nothing changed")
        return 0
    files.save_ca_key(cfg.data_dir, ident, ca_key)
    c = client(args)
    if c.is_running():
        c.request("POST", "/v1/ca/reload")
    output.emit_text(
        f"{ident.name} now holds the CA key of {ident.domain}: it can create tokens and "
        "remove nodes"
    )
    return 0


def cmd_node_remove(args: argparse.Namespace) -> int:
    from meshd.adapters.store.db import Store
    from meshd.identity import authority

    cfg = load_config(args)
    c = client(args)
    if c.is_running():
        path = f"/v1/roster/{quote(args.name, safe='')}?reason={quote(args.reason, safe='')}"
        doc = c.request("DELETE", path)
    else:
        ident = _ident(cfg)
        with Store.open(cfg.store_path) as store:
            revoked = authority.load_revocations(store, ident.ca_cert)
            rev, _ = authority.remove_node(
                store, ident, revoked, args.name, args.reason, time.time()
            )
        doc = {"name": rev.name, "serial": rev.serial, "revoked_at": rev.revoked_at}
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(
            f"removed {doc['name']} (certificate {doc['serial']}); it is refused everywhere"
        )
    return 0


def cmd_node_drain(args: argparse.Namespace) -> int:
    timeout = parse_duration(args.timeout, "--timeout")
    if timeout < 0:
        raise ConfigError("--timeout must not be negative, e.g. 5m")
    c = client(args)
    path = f"/v1/nodes/{quote(args.name, safe='')}"
    doc = c.request("POST", f"{path}/drain")
    if not args.json:
        output.emit_text(
            f"{doc['node']} drained: it bids on nothing; "
            f"moving {len(doc['moving'])} workload(s) away"
        )
    deadline = time.monotonic() + timeout
    last, moved_at = -1, time.monotonic()
    while doc["placed"] and time.monotonic() < deadline:
        time.sleep(0.5)
        doc.update(c.request("GET", f"{path}/drain"))
        if len(doc["placed"]) != last:
            last, moved_at = len(doc["placed"]), time.monotonic()
            if not args.json:
                output.emit_text(f"  {last} workload(s) still placed on {doc['node']}")
        elif time.monotonic() - moved_at > DRAIN_RETRY_S:
            # Stalled: an auction found no live candidate (a partition), or a placement
            # landed there before its originator heard of the drain. Draining again
            # re-places what is left; auctions still in flight are not doubled.
            moved_at = time.monotonic()
            doc.update(c.request("POST", f"{path}/drain"))
    done = not doc["placed"]
    doc["done"] = done
    if args.json:
        output.emit_json(doc)
    elif done:
        output.emit_text(f"{doc['node']} runs no workloads; `meshd node undrain` lets it bid again")
    else:
        output.emit_error(
            f"{len(doc['placed'])} workload(s) are still placed on {doc['node']} after "
            f"{args.timeout}: {', '.join(doc['placed'])}; `meshd auctions` says why "
            "(no other node may have room); the node stays drained"
        )
    return 0 if done or timeout == 0 else 1


def cmd_node_undrain(args: argparse.Namespace) -> int:
    doc = client(args).request("POST", f"/v1/nodes/{quote(args.name, safe='')}/undrain")
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(f"{doc['node']} undrained: it bids for workloads again")
    return 0


def _network_path(name: str = "") -> str:
    return "/v1/networks" + (f"/{quote(name, safe='')}" if name else "")


def _network_text(doc: dict[str, Any]) -> None:
    users = doc.get("addresses") or []
    skip = ("addresses",)
    fields = {k: (", ".join(v) or None) if k == "dns" else v for k, v in doc.items()}
    output.emit_fields({k: v for k, v in fields.items() if k not in skip})
    if users:
        output.emit_text("addresses in use:")
        output.emit_table(users, ["holder", "name", "ip", "mac", "state"])


def cmd_network_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "subnet": args.subnet, "dns": args.dns}
    for key in ("gateway", "bridge", "vlan"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    doc = client(args).request("POST", _network_path(), body)
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(f"network {doc['name']} created: {doc['subnet']} on {doc['bridge']}")
    return 0


def cmd_network_ls(args: argparse.Namespace) -> int:
    rows = client(args).request("GET", _network_path())["networks"]
    if not args.json:
        rows = [{**r, "dns": ",".join(r["dns"]) or None} for r in rows]
    _listing(args, rows, ["name", "subnet", "gateway", "bridge", "vlan", "dns"])
    return 0


def cmd_network_show(args: argparse.Namespace) -> int:
    doc = client(args).request("GET", _network_path(args.name))
    if args.json:
        output.emit_json(doc)
    else:
        _network_text(doc)
    return 0


def cmd_network_rm(args: argparse.Namespace) -> int:
    doc = client(args).request("DELETE", _network_path(args.name))
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(f"network {doc['name']} removed mesh-wide")
    return 0


def cmd_node_ls(args: argparse.Namespace) -> int:
    from meshd.adapters.store import roster
    from meshd.adapters.store.db import Store

    cfg = load_config(args)
    _require_identity(cfg)  # never create a data dir and an empty store by a typo
    with Store.open(cfg.store_path) as store:
        rows = [m.as_json() for m in roster.members(store, include_removed=True)]
    _listing(args, rows, ["name", "role", "address", "node_id", "removed_at"])
    return 0


def cmd_cert_create(args: argparse.Namespace) -> int:
    from meshd.identity import authority, files, pki

    cfg = load_config(args)
    ident = _ident(cfg)
    key, cert = authority.issue_client_cert(
        ident, args.name, args.role, cfg.security.cert_validity_days, time.time()
    )
    out = Path(args.out)
    files.ensure_private_dir(out)
    files.write_private(out / f"{args.name}.key", pki.key_pem(key))
    files.write_private(out / f"{args.name}.crt", pki.cert_pem(cert), 0o644)
    files.write_private(out / "ca.crt", pki.cert_pem(ident.ca_cert), 0o644)
    output.emit_text(f"wrote {out}/{args.name}.key, {args.name}.crt and ca.crt (role {args.role})")
    return 0


# -- run, status -------------------------------------------------------------------------


def _run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``meshd run``'s dedicated flags as config overrides (None: not given)."""
    return dict(
        listen=args.listen,
        advertise=args.advertise,
        seeds=args.seed or None,
        mdns=args.mdns,
        dns_listen=args.dns,
        witness=args.witness or None,
        labels=args.label or None,
        cpus=args.cpus,
        memory=args.memory,
        disk=args.disk,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def cmd_run(args: argparse.Namespace) -> int:
    import gc

    # No cyclic collection while ~200,000 long-lived objects are being built: the
    # collections would find nothing to free (~25 ms of CPU a start). The node enables
    # it again once ready, after freezing what start-up made (meshd.shell.node.serve).
    gc.disable()
    import uvloop

    from meshd.adapters import http_stack

    http_stack.load()  # before anything imports aiohttp

    from meshd import logs
    from meshd.identity import files
    from meshd.shell import node

    cfg = load_config(args, **_run_flags(args))
    logs.setup(cfg.log_level, cfg.log_format)
    ident = files.load(cfg.data_dir, time.time())
    # uvloop: the same asyncio API on libuv; measured ~20 % more placements/s.
    uvloop.run(node.serve(cfg, ident))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    doc = client(args).request("GET", "/v1/node")
    if args.json:
        output.emit_json(doc)
        return 0
    cap, alloc = doc["capacity"], doc["allocated"]
    output.emit_fields(
        {
            "name": doc["name"],
            "domain": doc["domain"],
            "node id": doc["node_id"],
            "address": doc["address"],
            "uptime": f"{doc['uptime_s']:.0f}s",
            "role": doc["role"]
            + (" (witness)" if doc["witness"] else "")
            + (" (draining)" if doc.get("draining") else ""),
            "ca holder": "yes" if doc["ca_holder"] else "no",
            "capacity": f"{cap['cpus']:g} cpus, {format_size(cap['memory'])} memory, "
            f"{format_size(cap['disk'])} disk" + (" (declared)" if cap["declared"] else ""),
            "allocated": f"{alloc['cpus']:g} cpus, {format_size(alloc['memory'])} memory, "
            f"{format_size(alloc['disk'])} disk",
            "members alive": f"{doc['members_alive']} of {doc['roster_size']} enrolled",
            "mesh key": f"epoch {doc.get('key_epoch', 0)}",
            "store": _store_line(doc.get("store")),
        }
    )
    return 0


def _store_line(store: Any) -> str:
    if not isinstance(store, dict) or store.get("writable", True):
        return "writable"
    return f"can't write, refusing work: {store.get('problem')}"


# -- the mesh: peers, services, names ---------------------------------------------------


def cmd_peers(args: argparse.Namespace) -> int:
    rows = client(args).request("GET", "/v1/peers")
    if not args.json:
        for row in rows:
            row["draining"] = "draining" if row.get("draining") else ""
    _listing(args, rows, ["name", "address", "state", "incarnation", "draining"])
    return 0


def cmd_service_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "port": args.port, "proto": args.proto}
    doc = client(args).request("POST", "/v1/services", body)
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(f"published {doc['name']} on port {doc['port']}/{doc['proto']}")
    return 0


def cmd_service_rm(args: argparse.Namespace) -> int:
    client(args).request("DELETE", f"/v1/services/{quote(args.name, safe='')}")
    output.emit_text(f"withdrew {args.name}")
    return 0


def cmd_service_ls(args: argparse.Namespace) -> int:
    rows = client(args).request("GET", "/v1/services")
    _listing(args, rows, ["name", "port", "proto", "published_at"])
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    rows = client(args).request("GET", f"/v1/resolve?name={quote(args.name, safe='')}")
    _listing(args, rows, ["service", "node", "address", "port", "proto"])
    return 0


# -- workloads and auctions --------------------------------------------------------------


def _services(specs: list[str]) -> list[dict[str, Any]]:
    out = []
    for item in specs:
        name, sep, port = item.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise ConfigError(f"--service must be NAME:PORT, got {item!r}")
        out.append({"name": name, "port": int(port)})
    return out


def _nics(items: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        # The network name has no ':', an IPv6 address has several: split at the first.
        net, sep, ip = item.partition(":")
        if not net or (sep and not ip):
            raise ConfigError(f"--net must be NET or NET:IP, got {item!r}")
        out.append({"network": net, "ip": ip} if sep else {"network": net})
    return out


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--label must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "cpus": args.cpus,
        "memory": parse_size(args.memory, "--memory"),
        "disk": parse_size(args.disk, "--disk"),
        "driver": args.driver,
        "services": _services(args.service),
        "nics": _nics(args.net),
        "nodes": args.node,
        "avoid": args.avoid,
        "labels": _labels(args.label),
        "requires": args.requires,
        "anti_affinity": args.anti_affinity,
        "restart": args.restart,
    }
    for key in ("image", "kernel", "initrd", "command", "tenant", "idempotency_key"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.user_data:
        try:
            body["user_data"] = Path(args.user_data).read_text()
        except OSError as exc:
            raise ConfigError(f"can't read --user-data {args.user_data}: {exc.strerror}") from exc
    # Checked here exactly as the daemon checks it: a mistake is one sentence, at once.
    from meshd.core import spec

    request = spec.check(body)
    if request.driver == "process" and not request.command:
        raise ConfigError(
            "a process workload needs a command to run: add --command CMD "
            "(or --driver qemu/firecracker with --kernel or --image for a VM)"
        )
    wait_s = parse_duration(args.wait_timeout, "--wait-timeout") if args.wait else 0.0
    if args.wait and wait_s <= 0:
        raise ConfigError("--wait-timeout must be positive, e.g. 5m")
    doc = client(args).request("POST", "/v1/workloads", spec.submission_json(request))
    if not args.json:
        bids = ", ".join(f"{b['node']}={b['score']}" for b in doc["bids"])
        output.emit_text(
            f"placed {doc['name']} ({doc['workload']}) on {doc['owner']} in "
            f"{doc['decided_ms']:.1f} ms, generation {doc['generation']}; bids: {bids}"
        )
    if args.wait:
        doc["state"], doc["detail"] = _wait_running(args, doc, wait_s)
    if args.json:
        output.emit_json(doc)
    return 0


def _wait_running(
    args: argparse.Namespace, placed: dict[str, Any], limit_s: float
) -> tuple[str, str]:
    """Poll the workload until it runs; a progress line on stderr as its state changes.
    A failure, or no ``running`` within ``limit_s``, is one sentence and exit 1."""
    wid, name = placed["workload"], placed["name"]
    started = time.monotonic()
    shown = ""
    c = client(args)
    while True:
        row = c.request("GET", f"/v1/workloads/{quote(wid, safe='')}")
        state, detail = str(row["state"]), str(row.get("detail") or "")
        if state != shown:
            took = time.monotonic() - started
            output.emit_progress(f"{name} on {row['owner']}: {state} after {took:.1f} s")
            shown = state
        if state == "running":
            return state, detail
        if state == "failed":
            raise PlacementError(f"{name} ({wid[:8]}) failed on {row['owner']}: {detail}")
        if time.monotonic() - started > limit_s:
            raise PlacementError(
                f"{name} ({wid[:8]}) is still {state} after {limit_s:g} s"
                f"{': ' + detail if detail else ''}; `meshd workload show {wid[:8]}` follows it"
            )
        time.sleep(0.1)


def cmd_ui(args: argparse.Namespace) -> int:
    import asyncio

    from meshd.cli import ui

    c = client(args)
    if not c.is_running():
        raise ConfigError(
            f"meshd is not running for this data directory (no answer on {c.socket_path}); "
            "start it with `meshd run`"
        )
    asyncio.run(ui.serve(c.socket_path, args.listen))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise ConfigError("--limit must be from 1 to 1000")
    query = f"/v1/events?since={max(0, args.since)}&limit={args.limit}"
    if not args.follow:
        rows = client(args).request("GET", query)
        if args.json:
            output.emit_json(rows)
        else:
            for row in rows:
                output.emit_text(_event_line(row))
        return 0
    pending = b""
    for chunk in client(args).stream("GET", query + "&follow=1"):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line:
                continue
            if args.json:  # JSON lines: one event per line, as the API streams them
                sys.stdout.write(line.decode() + "\n")
            else:
                output.emit_text(_event_line(json.loads(line)))
            sys.stdout.flush()
    return 0


def _event_line(row: dict[str, Any]) -> str:
    data = row.get("data") or {}
    fields = " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in data.items()
    )
    return f"{row['id']:>6}  {output.when(row['ts'])}  {row['kind']:<22} {row['subject']}  {fields}"


def cmd_workloads(args: argparse.Namespace) -> int:
    rows = client(args).request("GET", "/v1/workloads")
    if args.json:
        output.emit_json(rows)
        return 0
    # Short ids (any unique prefix is accepted back), addresses and why, for people.
    human = [
        {
            "id": r["workload"][:8],
            "name": r["name"],
            "owner": r["owner"],
            "gen": r["generation"],
            "state": r["state"],
            "addresses": ",".join(a["ip"] for a in r.get("addresses", [])) or None,
            "reason": r.get("detail") or None,
        }
        for r in rows
    ]
    output.emit_table(human, ["id", "name", "owner", "gen", "state", "addresses", "reason"])
    return 0


UUID_LENGTH = 36


def workload_id(args: argparse.Namespace) -> str:
    """``args.id`` as a full workload id: itself, else the one workload whose id starts
    with it or whose name it is (``meshd workload show web``, ``... show 3f2a``)."""
    given: str = args.id
    if len(given) == UUID_LENGTH:
        return given
    rows = client(args).request("GET", "/v1/workloads")
    by_name = [r["workload"] for r in rows if r["name"] == given]
    by_prefix = [r["workload"] for r in rows if r["workload"].startswith(given)] if given else []
    found = sorted(set(by_name) | set(by_prefix))
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise NotFoundError(
            f"no workload has the id, id prefix or name {given!r}; `meshd workloads` lists them"
        )
    some = ", ".join(f[:12] for f in found[:5])
    raise BadRequest(
        f"{given!r} matches {len(found)} workloads ({some}{', ...' if len(found) > 5 else ''}): "
        "give more of the id"
    )


def cmd_auctions(args: argparse.Namespace) -> int:
    if getattr(args, "auctions_command", None) == "show":
        doc = client(args).request("GET", f"/v1/auctions/{quote(args.round, safe='')}")
        if args.json:
            output.emit_json(doc)
        else:
            output.emit_fields({k: v for k, v in doc.items() if k != "bids"})
            output.emit_table(doc["bids"], ["node", "score", "reason"])
        return 0
    rows = client(args).request("GET", "/v1/auctions")
    _listing(args, rows, ["round", "workload", "originator", "winner", "outcome", "bids"])
    return 0


def cmd_workload_action(args: argparse.Namespace) -> int:
    args.id = workload_id(args)
    doc = client(args).request("POST", f"/v1/workloads/{quote(args.id, safe='')}/{args.action}")
    if args.json:
        output.emit_json(doc)
    else:
        detail = f" ({doc['detail']})" if doc.get("detail") else ""
        output.emit_text(f"{args.id} is {doc['state']} on {doc['node']}{detail}")
    return 0


def cmd_workload_logs(args: argparse.Namespace) -> int:
    args.id = workload_id(args)
    path = f"/v1/workloads/{quote(args.id, safe='')}/logs" + ("?follow=1" if args.follow else "")
    for chunk in client(args).stream("GET", path):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    return 0


def cmd_workload_show(args: argparse.Namespace) -> int:
    args.id = workload_id(args)
    doc = client(args).request("GET", f"/v1/workloads/{quote(args.id, safe='')}")
    if args.json:
        output.emit_json(doc)
    else:
        skip = ("spec", "resources", "addresses")
        output.emit_fields({k: v for k, v in doc.items() if k not in skip})
        if doc.get("addresses"):
            output.emit_text("addresses:")
            output.emit_table(doc["addresses"], ["network", "ip", "mac"])
        output.emit_text("spec:")
        output.emit_fields(doc["spec"])
    return 0


def cmd_workload_rm(args: argparse.Namespace) -> int:
    args.id = workload_id(args)
    doc = client(args).request("DELETE", f"/v1/workloads/{quote(args.id, safe='')}")
    if args.json:
        output.emit_json(doc)
    else:
        output.emit_text(f"removed {doc['name']} ({args.id}); {doc['owner']} tears it down")
    return 0


# -- config ------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    """What ``meshd run`` with the same flags would use, and where each value came from.

    Reads the files as ``run`` does and needs no running daemon.
    """
    from meshd.config import files as config_files

    resolved = resolve_config(args, **_run_flags(args))
    if args.json:
        output.emit_json(config_files.as_json(resolved))
    else:
        output.emit_text(config_files.as_toml(resolved))
    return 0
