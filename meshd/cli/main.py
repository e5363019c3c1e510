"""``meshd``: the command line. Every error is one sentence on stderr and exit code 1."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from meshd import __version__
from meshd.cli import commands, output
from meshd.errors import MeshdError

EPILOG = "Every command takes --data-dir (default /var/lib/meshd or $MESHD_DATA_DIR)."


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one sentence naming the help to read, not a
    usage block (subcommands' parsers are made of this class too)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"meshd: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def finite(text: str) -> float:
    """A number flag: NaN and infinity are refused (argparse names the flag)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


# A value that starts with '-' and a digit is a value (``--memory -1GiB`` then gets the
# size's own sentence), not an unknown option leaving the flag "expected one argument".
_NEGATIVE = re.compile(r"^-\d")
# The options every command takes; also accepted before the command (`meshd --data-dir D
# peers`), where they land under these names and are moved onto the command's own.
_GLOBAL = ("data_dir", "config", "preset")


def _common(p: argparse.ArgumentParser, json_flag: bool = False, *, dest: str = "") -> None:
    p._negative_number_matcher = _NEGATIVE
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        dest=f"{dest}data_dir",
        help="node data directory (identity, store, socket)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        dest=f"{dest}config",
        help="TOML config file (default DATA_DIR/meshd.toml)",
    )
    p.add_argument(
        "--preset",
        choices=["lan", "local", "sim"],
        dest=f"{dest}preset",
        help="base preset (default lan)",
    )
    if json_flag:
        p.add_argument(
            "--json", action="store_true", dest=f"{dest}json", help="print one JSON document"
        )


def _run_options(p: argparse.ArgumentParser) -> None:
    """The flags of ``meshd run`` that set config values (``config show`` takes them too)."""
    p.add_argument("--listen", metavar="HOST:PORT", help="mesh address, UDP and TCP (port 0: any)")
    p.add_argument("--advertise", metavar="HOST:PORT", help="address peers should use")
    p.add_argument("--seed", action="append", metavar="HOST:PORT", help="seed to join (repeatable)")
    p.add_argument(
        "--mdns", metavar="ADDR", help="announce and browse mDNS on the interface of ADDR"
    )
    p.add_argument(
        "--dns",
        metavar="HOST:PORT",
        help="serve DNS for the mesh's names on this UDP address (svc.node.domain, svc.domain)",
    )
    p.add_argument("--witness", action="store_true", help="vote and seed only; never run workloads")
    p.add_argument(
        "--label",
        action="append",
        metavar="K=V",
        help="a label of this node that workloads may require (repeatable)",
    )
    p.add_argument("--cpus", type=finite, help="declare CPU capacity instead of measuring")
    p.add_argument("--memory", metavar="SIZE", help="declare memory capacity, e.g. 2GiB")
    p.add_argument("--disk", metavar="SIZE", help="declare disk capacity, e.g. 20GiB")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config value, e.g. auction.window_s=300ms or membership.probe_interval_s=1s "
        "(repeatable; see `meshd config show`)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="meshd",
        description="Decentralized private-cloud node daemon.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    _common(parser, json_flag=True, dest="global_")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="found a new mesh, or join one with a token")
    _common(p, json_flag=True)
    p.add_argument("--name", required=True, help="this node's name (a DNS label)")
    p.add_argument("--domain", help="the mesh domain, e.g. lab.example (founding)")
    p.add_argument("--listen", metavar="HOST:PORT", help="mesh address to record for `run`")
    p.add_argument(
        "--join",
        metavar="TOKEN",
        help="join the mesh that issued TOKEN; if it fails, run the same command again: "
        "the key kept in identity/join.key is reused, so a join the seed accepted completes",
    )
    p.set_defaults(func=commands.cmd_init)

    p = sub.add_parser("token", help="join tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    t = tsub.add_parser("create", help="print a single-use join token (CA holders)")
    _common(t, json_flag=True)
    t.add_argument("--ttl", default=None, help="lifetime, e.g. 30m, 1h (default 1h)")
    t.add_argument(
        "--seed", action="append", metavar="HOST:PORT", help="seed address(es) to put in the token"
    )
    t.add_argument(
        "--replace",
        metavar="NAME",
        help="let a new node take NAME, which a removed node had (a replaced blade); "
        "the old certificate stays revoked",
    )
    t.set_defaults(func=commands.cmd_token_create)

    p = sub.add_parser("ca", help="the mesh CA key: more holders, an offline backup, a restore")
    casub = p.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    c = casub.add_parser(
        "promote",
        help="make another node a CA holder (enrolment and revocation survive the founder)",
        description="Run on a CA holder: sends the CA key to the member NODE over mutual "
        "TLS, sealed to NODE's own key and with a promotion signed by the CA key; NODE "
        "stores it (identity/ca.key, 0600) and can then create tokens and remove nodes.",
    )
    _common(c, json_flag=True)
    c.add_argument("node", help="a current, unrevoked member")
    c.set_defaults(func=commands.cmd_ca_promote)
    c = casub.add_parser(
        "backup",
        help="write the CA key, encrypted with a passphrase, to FILE (CA holders)",
        description="Seal the CA key with a passphrase (Argon2id + XSalsa20-Poly1305) "
        "into FILE (0600). Keep FILE offline and the passphrase apart from it: with "
        "both, anyone can enrol and remove nodes. Needs no running daemon.",
    )
    _common(c)
    c.add_argument("--out", required=True, metavar="FILE", help="where to write the backup")
    c.add_argument(
        "--passphrase-file", metavar="FILE", help="read the passphrase from FILE (else prompt)"
    )
    c.set_defaults(func=commands.cmd_ca_backup)
    c = casub.add_parser(
        "restore",
        help="make this member a CA holder again from a backup (every holder lost)",
        description="Open a backup made by `meshd ca backup` and write the CA key to this "
        "member's identity/ca.key (0600); a running daemon picks it up at once. The "
        "backup must be of this mesh's CA.",
    )
    _common(c)
    c.add_argument("--from", dest="source", required=True, metavar="FILE", help="the backup file")
    c.add_argument(
        "--passphrase-file", metavar="FILE", help="read the passphrase from FILE (else prompt)"
    )
    c.set_defaults(func=commands.cmd_ca_restore)

    p = sub.add_parser("bmc", help="this node's Redfish BMC, which fences it when it dies")
    bsub = p.add_subparsers(dest="bmc_command", metavar="ACTION", required=True)
    b = bsub.add_parser(
        "set",
        help="set this node's Redfish BMC (shared with the mesh, never printed back)",
        description="Store this node's BMC in DATA_DIR/identity/bmc.json (0600) through the "
        "running daemon (local operator or admin). The URL must be https unless --insecure "
        "is given; --insecure also accepts a certificate nobody vouches for. The password "
        "file must not be readable by group or others (chmod 600); one trailing newline is "
        "dropped. Nothing is contacted: run `meshd bmc check` next.",
    )
    _common(b, json_flag=True)
    b.add_argument("--url", required=True, metavar="URL", help="https://HOST[:PORT] of the BMC")
    b.add_argument("--user", required=True, metavar="U", help="the BMC user")
    b.add_argument(
        "--password-file", required=True, metavar="F", help="file holding the BMC password (0600)"
    )
    b.add_argument(
        "--system",
        metavar="SYSTEM",
        help="the system's Id or its URI path /redfish/v1/Systems/<Id> (default: the only one)",
    )
    trust = b.add_mutually_exclusive_group()
    trust.add_argument(
        "--ca-file", metavar="F", help="PEM CA that signed the BMC's certificate (copied in)"
    )
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="accept http and an unverified certificate (said explicitly, never a fallback)",
    )
    b.set_defaults(func=commands.cmd_bmc_set)
    b = bsub.add_parser(
        "check",
        help="reach this node's BMC and report its power state",
        description="The daemon logs in to its BMC and reads the system's PowerState; exits "
        "1 when it can't.",
    )
    _common(b, json_flag=True)
    b.set_defaults(func=commands.cmd_bmc_check)

    p = sub.add_parser("fence", help="fencing: dead nodes powered off by quorum")
    fsub = p.add_subparsers(dest="fence_command", metavar="ACTION", required=True)
    f = fsub.add_parser(
        "status",
        help="fence votes, decisions and their evidence",
        description="Every node with a fence episode as this node knows it: its state "
        "(dead, fencing, fenced, fence-failed), the epoch, the ballot's coordinator, the "
        "votes counted and how many a majority of the roster needs, this node's "
        "power-off attempts, and the evidence (a verified Off, an operator's confirm) or "
        "why it failed.",
    )
    _common(f, json_flag=True)
    f.set_defaults(func=commands.cmd_fence_status)
    f = fsub.add_parser(
        "confirm",
        help="the operator's word that NODE is off when its BMC can't be reached",
        description="Accepted only after a fence of NODE reached a quorum and failed "
        "(`meshd fence status` says fence-failed): it replaces the BMC's verification, "
        "never the quorum. Make sure NODE is off first (pull its power): its workloads "
        "are then started elsewhere.",
    )
    _common(f, json_flag=True)
    f.add_argument("node", metavar="NODE")
    f.set_defaults(func=commands.cmd_fence_confirm)

    p = sub.add_parser("network", help="mesh-wide networks for workloads' NICs (admin)")
    wsub = p.add_subparsers(dest="network_command", metavar="ACTION", required=True)
    w = wsub.add_parser(
        "create",
        help="define a mesh-wide network",
        description="Define NAME on every node: signed by this node, stored, then spread. "
        "Refused with a sentence if the subnet overlaps a network this node knows.",
    )
    _common(w, json_flag=True)
    w.add_argument("name", metavar="NAME")
    w.add_argument("--subnet", required=True, metavar="CIDR", help="e.g. 10.40.0.0/24")
    w.add_argument("--gateway", metavar="IP", help="the guests' default route, in the subnet")
    w.add_argument("--bridge", metavar="BR", help="the bridge nodes attach it to (br-NAME)")
    w.add_argument("--vlan", type=int, metavar="ID", help="VLAN id, 1-4094")
    w.add_argument(
        "--dns", action="append", default=[], metavar="IP", help="a DNS server (repeatable)"
    )
    w.set_defaults(func=commands.cmd_network_create)
    w = wsub.add_parser("ls", help="list the mesh's networks")
    _common(w, json_flag=True)
    w.set_defaults(func=commands.cmd_network_ls)
    w = wsub.add_parser("show", help="one network")
    _common(w, json_flag=True)
    w.add_argument("name", metavar="NAME")
    w.set_defaults(func=commands.cmd_network_show)
    w = wsub.add_parser("rm", help="remove an unused network mesh-wide")
    _common(w, json_flag=True)
    w.add_argument("name", metavar="NAME")
    w.set_defaults(func=commands.cmd_network_rm)

    p = sub.add_parser("node", help="the mesh's roster")
    nsub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    n = nsub.add_parser("remove", help="revoke a node; it is refused everywhere (CA holders)")
    _common(n, json_flag=True)
    n.add_argument("name")
    n.add_argument("--reason", default="removed by operator", help="recorded with the revocation")
    n.set_defaults(func=commands.cmd_node_remove)
    n = nsub.add_parser(
        "drain",
        help="move a node's workloads away by auction and stop it bidding (maintenance)",
        description="Drain NAME mesh-wide: it bids on nothing, no node offers it anything, "
        "and its workloads are auctioned to other nodes (same ids and specs, next "
        "generation). Waits until nothing is placed on NAME, printing progress.",
    )
    _common(n, json_flag=True)
    n.add_argument("name")
    n.add_argument(
        "--timeout", default="5m", help="give up waiting after this long (default 5m; 0: no wait)"
    )
    n.set_defaults(func=commands.cmd_node_drain)
    n = nsub.add_parser("undrain", help="let a drained node bid for workloads again")
    _common(n, json_flag=True)
    n.add_argument("name")
    n.set_defaults(func=commands.cmd_node_undrain)
    n = nsub.add_parser("ls", help="list enrolled nodes, removed ones included")
    _common(n, json_flag=True)
    n.set_defaults(func=commands.cmd_node_ls)

    p = sub.add_parser("cert", help="client certificates for the TCP API")
    csub = p.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    c = csub.add_parser("create", help="issue a key and certificate for an API client (CA holders)")
    _common(c)
    c.add_argument("--name", required=True, help="the client's name")
    c.add_argument("--role", default="admin", help="admin or tenant:<name>")
    c.add_argument(
        "--out", required=True, metavar="DIR", help="where to write NAME.key/.crt, ca.crt"
    )
    c.set_defaults(func=commands.cmd_cert_create)

    p = sub.add_parser("run", help="run the daemon in the foreground until SIGTERM/SIGINT")
    _common(p)
    _run_options(p)
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("config", help="the node's configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser(
        "show",
        help="the effective configuration (preset, file, flags) and where each value came from",
        description="Print what `meshd run` with the same flags would use: every value "
        "with its source (preset:NAME, file:PATH, flag, env:VAR). Needs no running daemon.",
    )
    _common(c, json_flag=True)
    _run_options(c)
    c.set_defaults(func=commands.cmd_config_show)

    p = sub.add_parser(
        "completion",
        help="print a bash or zsh completion script",
        description="Print a completion script generated from this CLI. bash: "
        "`meshd completion bash > /etc/bash_completion.d/meshd`; zsh: "
        "`source <(meshd completion zsh)` in ~/.zshrc.",
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=_cmd_completion)

    p = sub.add_parser(
        "ui",
        help="a live dashboard of this node's view in the browser (serves loopback)",
        description="Serve a live dashboard of the local daemon's view: members, capacity "
        "and allocation, placements, recent auctions with their bids, fence history, "
        "networks and addresses, events. Read-only; it binds loopback unless --listen "
        "says otherwise.",
    )
    _common(p)
    p.add_argument(
        "--listen", default="127.0.0.1:8420", metavar="HOST:PORT", help="default 127.0.0.1:8420"
    )
    p.set_defaults(func=commands.cmd_ui)

    p = sub.add_parser(
        "events",
        help="this node's event log; --follow streams new events as they happen",
    )
    _common(p, json_flag=True)
    p.add_argument("--since", type=int, default=0, metavar="ID", help="only events after ID")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events (a stream)"
    )
    p.set_defaults(func=commands.cmd_events)

    p = sub.add_parser("peers", help="the membership view: every member and its state")
    _common(p, json_flag=True)
    p.set_defaults(func=commands.cmd_peers)

    p = sub.add_parser("service", help="services this node publishes under @NAME@node@domain")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    s = ssub.add_parser("add", help="publish a service of this node")
    _common(s, json_flag=True)
    s.add_argument("name", help="service name (a DNS label)")
    s.add_argument("--port", type=int, required=True, help="port the service listens on")
    s.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    s.set_defaults(func=commands.cmd_service_add)
    s = ssub.add_parser("rm", help="withdraw a service of this node")
    _common(s)
    s.add_argument("name")
    s.set_defaults(func=commands.cmd_service_rm)
    s = ssub.add_parser("ls", help="services this node publishes")
    _common(s, json_flag=True)
    s.set_defaults(func=commands.cmd_service_ls)

    p = sub.add_parser("resolve", help="resolve @svc@node@domain, @svc@*@domain or @svc@domain")
    _common(p, json_flag=True)
    p.add_argument("name")
    p.set_defaults(func=commands.cmd_resolve)

    p = sub.add_parser("submit", help="place a workload by auction and wait for the decision")
    _common(p, json_flag=True)
    p.add_argument("--name", required=True, help="workload name")
    p.add_argument("--cpus", type=finite, required=True, help="CPUs to reserve")
    p.add_argument("--memory", required=True, metavar="SIZE", help="memory to reserve, e.g. 512MiB")
    p.add_argument("--disk", default="0", metavar="SIZE", help="disk to reserve (default 0)")
    p.add_argument("--driver", choices=["process", "qemu", "firecracker"], default="process")
    p.add_argument("--image", metavar="REF", help="disk image (qemu)")
    p.add_argument("--kernel", metavar="PATH", help="kernel for direct boot")
    p.add_argument("--initrd", metavar="PATH", help="initrd for direct boot")
    p.add_argument("--command", metavar="CMD", help="command line (process driver)")
    p.add_argument(
        "--service", action="append", default=[], metavar="NAME:PORT", help="publish a service"
    )
    p.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="NET[:IP]",
        help="a NIC on mesh network NET, with a fixed address IP or one from its pool (repeatable)",
    )
    p.add_argument("--user-data", metavar="FILE", help="cloud-init user-data (qemu)")
    p.add_argument("--tenant", help="tenant owning the workload")
    p.add_argument("--node", action="append", default=[], help="only these nodes (repeatable)")
    p.add_argument("--avoid", action="append", default=[], metavar="NODE", help="never these nodes")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="only nodes whose operator set this label (repeatable)",
    )
    p.add_argument(
        "--requires",
        action="append",
        default=[],
        metavar="CAP",
        help="a capability every candidate must have, e.g. kvm or arch:x86_64 (repeatable)",
    )
    p.add_argument(
        "--anti-affinity",
        action="append",
        default=[],
        metavar="NAME",
        help="never on a node running a workload of this name (repeatable)",
    )
    p.add_argument(
        "--restart",
        choices=["reschedule", "none"],
        default="reschedule",
        help="when its node is fenced: run it again elsewhere (default) or not",
    )
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="same key through the same node, same workload: safe retries",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="after placing it, wait until it runs (a progress line on stderr); exit 1 if it fails",
    )
    p.add_argument(
        "--wait-timeout",
        default="5m",
        metavar="DURATION",
        help="how long --wait waits (default 5m)",
    )
    p.set_defaults(func=commands.cmd_submit)

    p = sub.add_parser("workloads", help="the mesh-wide placement view as this node knows it")
    _common(p, json_flag=True)
    p.set_defaults(func=commands.cmd_workloads)

    p = sub.add_parser("workload", help="one workload's lifecycle, carried out by its owner")
    wsub = p.add_subparsers(dest="workload_command", metavar="ACTION", required=True)
    for action, text in (
        ("stop", "stop it (gracefully, then by force)"),
        ("start", "start it again"),
    ):
        w = wsub.add_parser(action, help=text)
        _common(w, json_flag=True)
        w.add_argument("id", help="workload id, a unique prefix of one, or a unique name")
        w.set_defaults(func=commands.cmd_workload_action, action=action)
    w = wsub.add_parser("show", help="one workload: spec, owner, generation, state")
    _common(w, json_flag=True)
    w.add_argument("id", help="workload id, a unique prefix of one, or a unique name")
    w.set_defaults(func=commands.cmd_workload_show)
    w = wsub.add_parser("rm", help="remove it: its owner stops it and deletes its files")
    _common(w, json_flag=True)
    w.add_argument("id", help="workload id, a unique prefix of one, or a unique name")
    w.set_defaults(func=commands.cmd_workload_rm)
    w = wsub.add_parser("logs", help="its console (serial) or stdout/stderr, from its owner")
    _common(w)
    w.add_argument("id", help="workload id, a unique prefix of one, or a unique name")
    w.add_argument("--follow", "-f", action="store_true", help="keep printing what it writes")
    w.set_defaults(func=commands.cmd_workload_logs)

    p = sub.add_parser("auctions", help="auction round history, with every bid and the winner")
    _common(p, json_flag=True)
    asub = p.add_subparsers(dest="auctions_command", metavar="ACTION")
    a = asub.add_parser("show", help="one round in detail")
    _common(a, json_flag=True)
    a.add_argument("round")
    p.set_defaults(func=commands.cmd_auctions)

    p = sub.add_parser("status", help="this node: identity, address, uptime, capacity")
    _common(p, json_flag=True)
    p.set_defaults(func=commands.cmd_status)
    return parser


def _cmd_completion(args: argparse.Namespace) -> int:
    from meshd.cli import completion  # noqa: PLC0415 - only this command needs it

    script = completion.bash if args.shell == "bash" else completion.zsh
    sys.stdout.write(script(build_parser()))
    return 0


def _hoist(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options given before the command apply to it, as if given after it."""
    for name in _GLOBAL:
        value = getattr(args, f"global_{name}", None)
        if value is not None and getattr(args, name, None) is None:
            setattr(args, name, value)
    if getattr(args, "global_json", False):
        if not hasattr(args, "json"):
            parser.error(f"meshd {args.command} has no --json output")
        args.json = True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            _match_negative(action)
    args = parser.parse_args(argv)
    _hoist(parser, args)
    if args.command != "run":
        logging.basicConfig(level=logging.WARNING, format="meshd: %(message)s")
    try:
        code: int = args.func(args)
    except MeshdError as exc:
        output.emit_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`meshd peers | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


def _match_negative(action: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for p in action.choices.values():
        p._negative_number_matcher = _NEGATIVE
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                _match_negative(a)


if __name__ == "__main__":
    sys.exit(main())
