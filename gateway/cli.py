"""``gb28181-gateway``: run the gateway, look at what its store holds while it runs, or manage
the console's users (``user add|list|passwd|disable|enable``; the first admin comes from here)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence

from gateway import __version__
from gateway.settings import Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gb28181-gateway",
        description="GB/T 28181 gateway: joins social units' NVRs and cameras to a city platform.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the gateway (embedded defaults without --config)")
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    dev = sub.add_parser("devices", help="list the devices in the store, with online state")
    dev.add_argument("--config", metavar="FILE", help="TOML configuration file")
    dev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cat = sub.add_parser(
        "catalog", help="print the stored catalog (channels and tree nodes, every field)"
    )
    cat.add_argument("--config", metavar="FILE", help="TOML configuration file")
    cat.add_argument("--device", metavar="ID", help="only what this device (or channel) reported")
    cat.add_argument("--json", action="store_true", help="print JSON with every field")
    idm = sub.add_parser(
        "idmap", help="print the IDs items have for each upper platform (id_policy = recode)"
    )
    idm.add_argument("--config", metavar="FILE", help="TOML configuration file")
    idm.add_argument("--upper", metavar="ID", help="only this upper platform")
    idm.add_argument("--json", action="store_true", help="print JSON")
    rts = sub.add_parser(
        "routes", help="print who answers each SIP method and MANSCDP command, and each event"
    )
    rts.add_argument("--config", metavar="FILE", help="TOML configuration file")
    rts.add_argument("--json", action="store_true", help="print JSON")
    usr = sub.add_parser(
        "user", help="manage console users in the store (works whether the gateway runs or not)"
    )
    usub = usr.add_subparsers(dest="user_command", required=True)
    add = usub.add_parser("add", help="create a user (the first admin: --role admin)")
    add.add_argument("username")
    add.add_argument("--role", choices=("viewer", "operator", "admin"), default="viewer")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument("--config", metavar="FILE", help="TOML configuration file")
    lst = usub.add_parser("list", help="list the users")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.add_argument("--config", metavar="FILE", help="TOML configuration file")
    pwd = usub.add_parser("passwd", help="set a user's password")
    pwd.add_argument("username")
    pwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    pwd.add_argument("--config", metavar="FILE", help="TOML configuration file")
    dis = usub.add_parser("disable", help="disable a user (their console sessions end)")
    dis.add_argument("username")
    dis.add_argument("--config", metavar="FILE", help="TOML configuration file")
    ena = usub.add_parser("enable", help="enable a disabled user again")
    ena.add_argument("username")
    ena.add_argument("--config", metavar="FILE", help="TOML configuration file")
    return p


def _read_password(from_stdin: bool) -> str | None:
    """The new password: the first line of standard input, or typed twice (not echoed)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        print("user: the passwords differ", file=sys.stderr)
        return None
    return first


def _user(config: Config, args: argparse.Namespace) -> int:
    """``user add|list|passwd|disable|enable``: read and write the ``user`` records in the
    store as the API does (argon2id hashes). The store is SQLite in WAL mode, so this works
    while the gateway runs; the gateway reads the users again at each login and, for open
    sessions, every few seconds (``gateway.api.auth.USERS_RELOAD``)."""
    if not _sqlite_only(config, "user"):
        return 2
    from pathlib import Path

    from gateway.api.auth import USER, hash_password, password_problem, user_view, valid_name
    from gateway.store import SqliteStore

    command = args.user_command
    if command == "list":
        records: dict[str, dict[str, object]] = {}
        if Path(config.store.path).exists():
            store = SqliteStore(config.store.path)
            records = dict(store.load_records(USER))
            asyncio.run(store.close())
        users = [user_view(name, data) for name, data in sorted(records.items())]
        if args.json:
            print(json.dumps(users, ensure_ascii=False, indent=2))
            return 0
        print(f"{'USERNAME':<32}  {'ROLE':<8}  STATE")
        for u in users:
            state = "disabled" if u["disabled"] else "enabled"
            print(f"{u['username']!s:<32}  {u['role']!s:<8}  {state}")
        print(f"{len(users)} users")
        return 0

    name: str = args.username
    if command == "add" and not valid_name(name):
        print("user: a name is 1-64 letters, digits or ._-@", file=sys.stderr)
        return 2
    store = SqliteStore(config.store.path)
    try:
        data = dict(store.load_records(USER)).get(name)
        if command == "add" and data is not None:
            print(f"user: {name!r} exists", file=sys.stderr)
            return 1
        if command != "add" and data is None:
            print(f"user: no user {name!r}", file=sys.stderr)
            return 1
        if command in ("add", "passwd"):
            password = _read_password(args.password_stdin)
            if password is None:
                return 1
            problem = password_problem(password)
            if problem is not None:
                print(f"user: the password {problem}", file=sys.stderr)
                return 2
            data = {
                "role": getattr(args, "role", "viewer"),
                "disabled": False,
                "created_at": time.time(),
                **(data or {}),
                "hash": hash_password(password),
            }
        else:
            data = {**(data or {}), "disabled": command == "disable"}
        store.save_record(USER, name, data)
    finally:
        asyncio.run(store.close())  # writes what was saved
    done = {"add": "created", "passwd": "password set", "disable": "disabled"}
    print(f"user {name}: {done.get(command, 'enabled')}")
    return 0


def _routes(config: Config, as_json: bool) -> int:
    """The route table and the event subscribers of a gateway built from ``config`` (in memory:
    nothing is started, no socket opened, the store not touched)."""
    from gateway.app import Gateway
    from gateway.routes import handler_name
    from gateway.store import MemoryStore

    gw = Gateway(config, store=MemoryStore())
    routes = [{"method": m, "command": c, "handler": h} for m, c, h in gw.routes.describe()]
    events = [
        {"event": event.__name__, "handler": handler_name(handler)}
        for event, handler in gw.event_subscribers()
    ]
    if as_json:
        print(json.dumps({"routes": routes, "events": events}, indent=2))
        return 0
    print(f"{'METHOD':<10}  {'MANSCDP':<40}  HANDLER")
    for r in routes:
        print(f"{r['method']:<10}  {r['command']:<40}  {r['handler']}")
    print(f"\n{'EVENT':<24}  SUBSCRIBER (in the order they hear it)")
    for e in events:
        print(f"{e['event']:<24}  {e['handler']}")
    return 0


def _idmap(config: Config, upper: str | None, as_json: bool) -> int:
    if not _sqlite_only(config, "idmap"):
        return 2
    from gateway.store import read_id_map

    rows = read_id_map(config.store.path, upper)
    if as_json:
        out = [{"upper_id": u, "local_id": loc, "upper_item_id": m} for u, loc, m in rows]
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'UPPER':<20}  {'LOCAL ID':<20}  ID AT THE UPPER")
    for u, loc, m in rows:
        print(f"{u:<20}  {loc:<20}  {m}")
    print(f"{len(rows)} mappings")
    return 0


def _sqlite_only(config: Config, command: str) -> bool:
    if config.store.backend == "sqlite":
        return True
    print(
        f"{command}: the memory store lives inside the gateway process; nothing to read",
        file=sys.stderr,
    )
    return False


def _catalog(config: Config, device: str | None, as_json: bool) -> int:
    if not _sqlite_only(config, "catalog"):
        return 2
    from gateway.manscdp import item_kind, to_plain
    from gateway.store import read_catalog

    rows = read_catalog(config.store.path, device)
    if as_json:
        out = [
            {"owner_id": owner, "kind": item_kind(item.device_id), **to_plain(item)}
            for owner, item in rows
        ]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"{'ITEM ID':<20}  {'KIND':<14}  {'STATUS':<6}  {'PARENT':<20}  {'DEVICE':<20}  NAME")
    for owner, item in rows:
        parent = item.parent_id or item.group_id or ""
        print(
            f"{item.device_id:<20}  {item_kind(item.device_id):<14}  {item.status or '':<6}  "
            f"{parent[:20]:<20}  {owner:<20}  {item.name or ''}"
        )
    channels = sum(1 for _, item in rows if item_kind(item.device_id) == "channel")
    print(f"{len(rows)} items, {channels} channels")
    return 0


def _devices(config: Config, as_json: bool) -> int:
    if not _sqlite_only(config, "devices"):
        return 2
    from gateway.store import read_devices

    now = time.time()
    rows = []
    for d in read_devices(config.store.path):
        rows.append(
            {
                "device_id": d.device_id,
                "online": d.online and d.expires_at > now,
                "transport": d.transport,
                "address": f"{d.host}:{d.port}",
                "expires": d.expires,
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(d.expires_at)),
                "expires_in": max(0, int(d.expires_at - now)),
                "user_agent": d.user_agent,
                "gb_version": d.gb_version,
                "name": d.name,
                "manufacturer": d.manufacturer,
                "model": d.model,
                "firmware": d.firmware,
                "channel_count": d.channel_count,
                "charset": d.charset,
            }
        )
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    header = (
        f"{'DEVICE ID':<20}  {'STATE':<7}  {'TRANSPORT':<9}  {'ADDRESS':<21}  {'EXPIRES IN':>10}"
    )
    print(header)
    for r in rows:
        state = "online" if r["online"] else "offline"
        print(
            f"{r['device_id']:<20}  {state:<7}  {r['transport']:<9}  {r['address']:<21}  "
            f"{r['expires_in']:>9}s"
        )
    print(f"{len(rows)} devices, {sum(1 for r in rows if r['online'])} online")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "devices":
        return _devices(config, args.json)
    if args.command == "catalog":
        return _catalog(config, args.device, args.json)
    if args.command == "idmap":
        return _idmap(config, args.upper, args.json)
    if args.command == "routes":
        return _routes(config, args.json)
    if args.command == "user":
        return _user(config, args)
    from gateway.app import configure_logging, install_event_loop_policy, serve

    configure_logging(config)
    install_event_loop_policy()
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the gateway's own handler was installed
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
