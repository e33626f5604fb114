"""API tokens from the command line: ``opsctl tokens`` online, ``stanch-cp tokens`` offline.

- ``opsctl tokens create --name alice --role operator [--expires 30d]`` asks the control plane
  (Security service, admin role) and prints the token once: only its hash is kept.
- ``opsctl tokens list [--all]``, ``opsctl tokens revoke ID``.
- ``opsctl tokens set-role ID ROLE`` gives a token another role from its next call on (the audit
  entry ``token.set_role`` keeps the old and the new role); the holder keeps the same secret.
- ``stanch-cp tokens create --db PATH --name N --role admin [--expires 30d]`` opens the database
  directly, without any token: the bootstrap for the first admin token, and the way back in when
  every admin token is lost. Whoever can open the database file (local root on the control-plane
  host) is trusted already; the action is written to the audit log as ``local:<user>``.
  ``stanch-cp tokens revoke --db PATH ID`` cuts a token off the same way.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from agent.duration import parse_duration
from agent.errors import StanchError
from controlplane.admin_client import AdminClient, add_connection_args
from controlplane.auth import ROLES, Principal, mint, split_token
from controlplane.output import add_output_arg, ago, emit, message_dict, stamp, table

OK = 0
SHOWN_ONCE = "store it now: it is shown only once and cannot be recovered"


class SecurityClient(AdminClient):
    """``AdminClient``'s connection, timeouts and error mapping, for the Security service."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from stanch.v1 import security_pb2_grpc

        # ``call`` looks methods up by name, so any stub on this channel fits; the generated
        # constructor is unannotated (protoc output).
        self._stub = security_pb2_grpc.SecurityStub(self._channel)  # type: ignore[no-untyped-call,assignment]


def _seconds(text: str) -> float:
    if not text:
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise StanchError(f"--expires {text!r}: {exc}") from None


def _token_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="who holds it: alice, ci-deploy")
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--expires", default="", help="lifetime such as 30d (default: never)")


# ---- opsctl tokens -------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    tokens = subparsers.add_parser("tokens", help="operator API tokens (admin)")
    cmds = tokens.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    create = cmds.add_parser("create", help="mint a token; printed once")
    _token_args(create)
    add_connection_args(create)
    add_output_arg(create)
    create.set_defaults(func=cmd_create)
    listing = cmds.add_parser("list", help="tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked and expired ones too")
    add_connection_args(listing)
    add_output_arg(listing)
    listing.set_defaults(func=cmd_list)
    revoke = cmds.add_parser("revoke", help="cut a token off at once")
    revoke.add_argument("id", help="token id (from 'opsctl tokens list')")
    add_connection_args(revoke)
    add_output_arg(revoke)
    revoke.set_defaults(func=cmd_revoke)
    set_role = cmds.add_parser("set-role", help="give a token another role (from its next call)")
    set_role.add_argument("id", help="token id (from 'opsctl tokens list')")
    set_role.add_argument("role", choices=ROLES)
    add_connection_args(set_role)
    add_output_arg(set_role)
    set_role.set_defaults(func=cmd_set_role)


def cmd_create(args: argparse.Namespace) -> int:
    from stanch.v1 import security_pb2

    request = security_pb2.CreateTokenRequest(
        name=args.name, role=args.role, expires_in_seconds=_seconds(args.expires)
    )
    client = SecurityClient.from_args(args)
    try:
        response = client.call("CreateToken", request)
    finally:
        client.close()
    emit(message_dict(response), args.output, lambda: response.token)
    if args.output == "table":
        print(f"token {response.info.id} ({response.info.role}): {SHOWN_ONCE}", file=sys.stderr)
    return OK


def _rows(tokens: Sequence[Any]) -> str:
    now = time.time()
    rows = [
        [
            t.id,
            t.name,
            t.role,
            stamp(t.created_at),
            stamp(t.expires_at) if t.expires_at else "never",
            "revoked" if t.revoked_at else ("expired" if 0 < t.expires_at <= now else "active"),
            ago(t.last_used_at, now),
            t.created_by,
        ]
        for t in tokens
    ]
    headers = ["id", "name", "role", "created", "expires", "state", "used", "by"]
    return table(headers, rows)


def cmd_list(args: argparse.Namespace) -> int:
    from stanch.v1 import security_pb2

    client = SecurityClient.from_args(args)
    try:
        response = client.call(
            "ListTokens", security_pb2.ListTokensRequest(include_inactive=args.all)
        )
    finally:
        client.close()
    emit(message_dict(response), args.output, lambda: _rows(response.tokens))
    return OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from stanch.v1 import security_pb2

    parts = split_token(args.id)
    token_id = parts[0] if parts else args.id  # never send a pasted secret over the wire
    client = SecurityClient.from_args(args)
    try:
        info = client.call("RevokeToken", security_pb2.RevokeTokenRequest(id=token_id))
    finally:
        client.close()
    emit(message_dict(info), args.output, lambda: f"revoked {info.id} ({info.name}, {info.role})")
    return OK


def cmd_set_role(args: argparse.Namespace) -> int:
    from stanch.v1 import security_pb2

    parts = split_token(args.id)
    token_id = parts[0] if parts else args.id  # never send a pasted secret over the wire
    client = SecurityClient.from_args(args)
    try:
        response = client.call(
            "SetTokenRole", security_pb2.SetTokenRoleRequest(id=token_id, role=args.role)
        )
    finally:
        client.close()
    info = response.info
    emit(
        message_dict(response),
        args.output,
        lambda: f"token {info.id} ({info.name}): role {response.old_role} -> {info.role}",
    )
    return OK


# ---- stanch-cp tokens (offline) ------------------------------------------------------------------


def local_principal() -> Principal:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Principal(f"local:{user}@{socket.gethostname()}", "admin", "local")


def offline_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stanch-cp tokens",
        description="Manage operator tokens directly in the control-plane database (no token "
        "needed: access to the database file is the trust anchor).",
    )
    cmds = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = cmds.add_parser("create", help="mint a token (e.g. the first admin token)")
    create.add_argument("--db", required=True, help="the control plane's --db")
    _token_args(create)
    revoke = cmds.add_parser("revoke", help="cut a token off")
    revoke.add_argument("--db", required=True)
    revoke.add_argument("id")
    return p


def offline_main(argv: Sequence[str]) -> int:
    """``stanch-cp tokens ...``: 0 done, 1 refused, 2 could not run."""
    args = offline_parser().parse_args(argv)
    from controlplane.audit import canonical
    from controlplane.storage import open_storage
    from controlplane.storage.base_auth import AuditDraft

    try:
        expires = _seconds(getattr(args, "expires", ""))
        storage = open_storage(args.db)
    except StanchError as exc:
        print(f"stanch-cp tokens: {exc}", file=sys.stderr)
        return 2
    who = local_principal()
    now = time.time()
    try:
        if args.command == "create":
            token, record = mint(args.name, args.role, now, expires, who.name)
            storage.put_api_token(record)
            action, target, result = "token.create", f"name={record.name}", "ok"
            detail = canonical({"id": record.id, "role": record.role})
        else:
            parts = split_token(args.id)
            token_id = parts[0] if parts else args.id
            revoked = storage.revoke_api_token(token_id, now)
            action, target, detail = "token.revoke", f"id={token_id}", "{}"
            result = "ok" if revoked else "NOT_FOUND"
        storage.append_audit(
            AuditDraft(now, who.name, who.role, who.via, action, target, "local", result, detail)
        )
    except StanchError as exc:
        print(f"stanch-cp tokens: {exc}", file=sys.stderr)
        return 1
    finally:
        storage.close()
    if args.command == "create":
        print(token)
        print(f"token {record.id} ({record.role}) for {record.name}: {SHOWN_ONCE}", file=sys.stderr)
        return 0
    if result != "ok":
        print(f"stanch-cp tokens: token {token_id!r}: no such token", file=sys.stderr)
        return 1
    print(f"revoked {token_id}")
    return 0
