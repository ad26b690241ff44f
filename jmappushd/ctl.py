"""``jmappushctl``: manage users, tokens and grants, check the config, publish changes.

Every failure prints one line, ``jmappushctl: error: ...``, and exits non-zero.
User and token commands write the configured store directly (for SQLite, safe
while the daemon runs: WAL and a busy timeout); the daemon notices through the
auth generation.
``publish`` goes through the running daemon's admin listener; it first looks in the
store whether any user can read the account (a warning if not, an error with
``--strict``). ``check-config`` reports every reason the daemon would refuse to start,
one line each, without creating anything (with PostgreSQL: that the DSN connects and
the schema is not newer than this release). ``migrate`` brings the schema up to date.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore

from jmappushd import __version__
from jmappushd.auth.passwords import hash_password, new_bearer_token, token_digest
from jmappushd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from jmappushd.daemon.statedir import (
    StateError,
    check_state,
    load_or_create_admin_token,
    prepare_state,
)
from jmappushd.endpointargs import endpoint_arguments, unwrap
from jmappushd.gateway.wiring import gateway_problems
from jmappushd.store.backends import check_store, create_store, migrate_store, prepare_store
from jmappushd.store.interface import IPrincipalStore
from jmappushd.store.records import AccountInUse, NoSuchUser, StoreError, UserExists

_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # fullmatch: "$" would allow a trailing newline
_USERNAME = re.compile(r"[^\s:]{1,255}")


class CtlError(Exception):
    """A user-facing failure: each argument is printed as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jmappushctl",
        description="Administer a jmappushd daemon: users, tokens, account grants, publishing.",
    )
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH,
                   help=f"the daemon's INI file (default: {DEFAULT_CONFIG_PATH})")
    p.add_argument("--version", action="version", version=f"jmappushctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("check-config", help="check the config file, its ports, TLS files and "
                   "paths as the daemon would, without creating anything, and exit")
    sub.add_parser("migrate", help="create or upgrade the store's schema now (the daemon "
                   "also does it at start)")

    user = sub.add_parser("user", help="add, list, remove users or set passwords")
    us = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = us.add_parser("add", help="create a user with a personal account")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--account-id", help="reuse the mail store's account id (default: random)")
    add.add_argument("--exist-ok", action="store_true",
                     help="succeed without changes if the user already exists")
    us.add_parser("list", help="list users and their accounts")
    rm = us.add_parser("remove", help="remove a user, its tokens and push subscriptions")
    rm.add_argument("name")
    pw = us.add_parser("passwd", help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")

    token = sub.add_parser("token", help="create, list or revoke bearer tokens")
    ts = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = ts.add_parser("create", help="print a new bearer token (shown only this once)")
    tc.add_argument("name")
    tc.add_argument("--label", default="", help="a note to recognise the token by")
    tl = ts.add_parser("list", help="list a user's tokens (ids only)")
    tl.add_argument("name")
    tr = ts.add_parser("revoke", help="revoke a token by id; destroys its push subscriptions")
    tr.add_argument("token_id")

    account = sub.add_parser("account", help="grant or revoke access to other accounts")
    acs = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("grant", "let USER read ACCOUNT_ID"), ("revoke", "undo a grant")):
        a = acs.add_parser(action, help=text)
        a.add_argument("user")
        a.add_argument("account_id")

    pub = sub.add_parser("publish", help="tell the running daemon that states changed")
    pub.add_argument("account_id")
    pub.add_argument("changes", nargs="+", metavar="TYPE=STATE")
    pub.add_argument("--url", help="admin base URL (default: from [admin] listen)")
    pub.add_argument("--strict", action="store_true",
                     help="publish nothing if no user can read ACCOUNT_ID (default: warn only)")

    vapid = sub.add_parser("vapid", help="manage the Web Push (VAPID) signing key")
    vs = vapid.add_subparsers(dest="action", required=True, metavar="ACTION")
    rot = vs.add_parser("rotate", help="switch to a new key; old-key subscriptions are destroyed")
    rot.add_argument("--url", help="admin base URL (default: from [admin] listen)")
    return p


def read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CtlError("the passwords differ")
    else:
        raise CtlError("use --password-stdin to read the password from standard input")
    if not password:
        raise CtlError("the password must not be empty")
    return password


async def _with_store(config: Config,
                      work: Callable[[IPrincipalStore], Coroutine[Any, Any, Any]]) -> Any:
    from twisted.internet import reactor

    store = create_store(config.storage, reactor)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


async def _user(args: argparse.Namespace, store: IPrincipalStore, out: TextIO,
                stdin: TextIO) -> None:
    if args.action == "add":
        if not _USERNAME.fullmatch(args.name):
            raise CtlError(f"invalid user name {args.name!r} (no spaces or colons)")
        if args.account_id is not None and not _ID.fullmatch(args.account_id):
            raise CtlError(f"invalid account id {args.account_id!r} (use A-Za-z0-9_-)")
        if args.exist_ok and await store.get_user(args.name) is not None:
            out.write(f"user {args.name} exists\n")
            return
        password = read_password(args.password_stdin, stdin)
        user = await store.add_user(args.name, hash_password(password), args.account_id)
        out.write(f"added user {user.name} with account {user.primary_account_id}\n")
    elif args.action == "list":
        for user in await store.list_users():
            accounts = await store.accounts_for_user(user.id)
            out.write(f"{user.name}\t{' '.join(a.id for a in accounts)}\n")
    elif args.action == "remove":
        if not await store.remove_user(args.name):
            raise CtlError(f"no such user: {args.name}")
        out.write(f"removed user {args.name}\n")
    elif args.action == "passwd":
        password = read_password(args.password_stdin, stdin)
        await store.set_password(args.name, hash_password(password))
        out.write(f"password of {args.name} changed\n")


async def _token(args: argparse.Namespace, store: IPrincipalStore, out: TextIO) -> None:
    if args.action == "create":
        token = new_bearer_token()
        record = await store.create_token(args.name, token_digest(token), args.label)
        sys.stderr.write(f"token id {record.id} for {args.name}\n")
        out.write(token + "\n")
    elif args.action == "list":
        if await store.get_user(args.name) is None:
            raise CtlError(f"no such user: {args.name}")
        for record in await store.list_tokens(args.name):
            out.write(f"{record.id}\t{record.created:.0f}\t{record.label}\n")
    elif args.action == "revoke":
        if not await store.revoke_token(args.token_id):
            raise CtlError(f"no such token: {args.token_id}")
        out.write(f"revoked token {args.token_id}\n")


async def _account(args: argparse.Namespace, store: IPrincipalStore, out: TextIO) -> None:
    if args.action == "grant":
        await store.grant(args.user, args.account_id)
        out.write(f"{args.user} may now read account {args.account_id}\n")
    elif not await store.revoke_grant(args.user, args.account_id):
        raise CtlError(f"{args.user} had no grant on {args.account_id}")
    else:
        out.write(f"grant of {args.account_id} to {args.user} revoked\n")


def admin_url(config: Config) -> str:
    """Derive ``http://host:port`` from the first tcp endpoint in ``[admin] listen``
    (``reuseport:tcp:...`` included)."""
    for description in config.admin.listen:
        args, options = endpoint_arguments(unwrap(description))
        port = args[1] if len(args) >= 2 else options.get("port")
        if args[0] in ("tcp", "tcp6") and port is not None:
            host = options.get("interface", "127.0.0.1")
            if host in ("", "0.0.0.0"):  # noqa: S104 - a bind-all address, mapped to loopback
                host = "127.0.0.1"
            if host in ("::", "::0"):
                host = "::1"
            if ":" in host:
                host = f"[{host}]"
            return f"http://{host}:{port}"
    raise CtlError("no tcp endpoint in [admin] listen; pass --url")


def parse_changes(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        type_name, sep, state = pair.partition("=")
        if not sep or not type_name or not state:
            raise CtlError(f"expected TYPE=STATE, got {pair!r}")
        out[type_name] = state
    return out


def admin_post(config: Config, base_url: str | None, path: str, body: Any) -> Any:
    """POST JSON to the running daemon's admin listener with the admin token."""
    try:
        token = load_or_create_admin_token(config.admin.token_file)
    except (OSError, StateError) as exc:
        raise CtlError(f"cannot read the admin token: {exc}") from exc
    url = (base_url or admin_url(config)).rstrip("/") + path
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's admin endpoint
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("detail", detail)
        raise CtlError(f"{path} refused ({exc.code}): {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CtlError(f"cannot reach the daemon at {url}: {exc}") from exc


async def unreadable_accounts(store: IPrincipalStore, account_ids: Collection[str]
                              ) -> list[str]:
    """The ids no user can read: neither some user's own account nor granted to one.

    One query for the users; each user's grants are read only while some id is still
    unaccounted for (an id nobody reads costs one query per user, fine for a CLI).
    """
    missing = set(account_ids)
    users = await store.list_users()
    missing -= {user.primary_account_id for user in users}
    for user in users:
        if not missing:
            break
        missing -= {account.id for account in await store.accounts_for_user(user.id)}
    return sorted(missing)


def publish(args: argparse.Namespace, config: Config, out: TextIO, err: TextIO) -> None:
    """Warn about (or, with --strict, refuse) an account nobody reads, then publish.

    The mail store may run ahead of provisioning, so by default the change is recorded
    anyway: a user created later with that account id catches up from it.
    """
    if not _ID.fullmatch(args.account_id):
        raise CtlError(f"invalid account id {args.account_id!r}")
    body = {"@type": "StateChange", "changed": {args.account_id: parse_changes(args.changes)}}
    prepare_and_run(config, lambda store: _warn_unreadable(store, args, err))
    reply = admin_post(config, args.url, "/publish", body)
    out.write(f"published as seq {reply.get('seq', '?')}\n")


async def _warn_unreadable(store: IPrincipalStore, args: argparse.Namespace,
                           err: TextIO) -> None:
    for account_id in await unreadable_accounts(store, [args.account_id]):
        if args.strict:
            raise CtlError(f"no user can read account {account_id}; nothing published "
                           "(without --strict it is published anyway)")
        err.write(f"jmappushctl: warning: no user can read account {account_id} "
                  "(published anyway; --strict refuses)\n")


def rotate_vapid_key(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    reply = admin_post(config, args.url, "/vapid/rotate", {})
    out.write(f"new applicationServerKey {reply.get('applicationServerKey')}; "
              f"{reply.get('destroyed', 0)} subscriptions of the old key destroyed\n")


def check_config(path: str, out: TextIO, err: TextIO) -> None:
    """Everything the daemon would refuse: the config (keys, values, ports, TLS files) and
    the paths (state-dir, token-file, storage path: usable or creatable); what it accepts
    but warns about (deprecated keys) goes to ``err``."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CtlError(str(exc)) from exc
    for warning in config.warnings:
        err.write(f"jmappushctl: warning: {warning}\n")
    problems = check_state(config)
    problems += _store_problems(config)
    if config.upstream.enabled:
        problems += gateway_problems(config)
    if problems:
        raise CtlError(*problems)
    out.write(f"{path}: OK\n")


def _store_problems(config: Config) -> list[str]:
    """A database server's problems (connects? schema not newer?); none for SQLite's file,
    which check_state covers."""
    if config.storage.backend == "sqlite":
        return []
    try:
        prepare_store(config.storage)
    except StoreError as exc:
        return [f"{config.path}: {exc}"]
    return [f"{config.path}: {problem}" for problem in check_store(config.storage)]


def migrate(config: Config, out: TextIO) -> None:
    """Create or upgrade the schema and say from which version to which."""
    try:
        found, now = migrate_store(config.storage)
    except StoreError as exc:
        raise CtlError(str(exc)) from exc
    if found == now:
        out.write(f"schema up to date (version {now})\n")
    else:
        out.write(f"schema migrated from version {found} to {now}\n")


def run(argv: Sequence[str], out: TextIO, stdin: TextIO, err: TextIO | None = None) -> None:
    args = _parser().parse_args(argv)
    err = sys.stderr if err is None else err
    if args.command == "check-config":
        check_config(args.config, out, err)
        return
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CtlError(str(exc)) from exc
    for warning in config.warnings:
        err.write(f"jmappushctl: warning: {warning}\n")
    if config.upstream.enabled and args.command in ("user", "token", "account"):
        # Gateway mode: users, passwords, tokens and accounts are the upstream's.
        raise CtlError(f"{config.path}: [upstream] session-url is set (gateway mode): users, "
                       f"tokens and accounts are managed by the upstream JMAP server, not "
                       f"with 'jmappushctl {args.command}'")
    if args.command == "publish":
        publish(args, config, out, err)
        return
    if args.command == "vapid":
        rotate_vapid_key(args, config, out)
        return
    if args.command == "migrate":
        migrate(config, out)
        return
    handlers: dict[str, Callable[[IPrincipalStore], Coroutine[Any, Any, None]]] = {
        "user": lambda store: _user(args, store, out, stdin),
        "token": lambda store: _token(args, store, out),
        "account": lambda store: _account(args, store, out),
    }
    if args.command == "account" and not _ID.fullmatch(args.account_id):
        raise CtlError(f"invalid account id {args.account_id!r} (use A-Za-z0-9_-)")
    prepare_and_run(config, handlers[args.command])


def prepare_and_run(config: Config,
                    work: Callable[[IPrincipalStore], Coroutine[Any, Any, None]]) -> None:
    """Prepare the state directory, open the store, run ``work`` on the reactor, close.

    Every failure comes back as one CtlError.
    """
    try:
        prepare_state(config)
    except StateError as exc:
        raise CtlError(str(exc)) from exc
    failure: list[BaseException] = []

    def main(reactor: IReactorCore) -> defer.Deferred[None]:
        async def guarded() -> None:
            try:
                await _with_store(config, work)
            except Exception as exc:
                failure.append(exc)

        return defer.ensureDeferred(guarded())

    try:
        task.react(main)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise CtlError("internal error") from exc
    if failure:
        raise _one_line(failure[0])


def _one_line(error: BaseException) -> CtlError:
    if isinstance(error, CtlError):
        return error
    if isinstance(error, UserExists):
        return CtlError(f"user exists: {error}")
    if isinstance(error, NoSuchUser):
        return CtlError(f"no such user: {error}")
    if isinstance(error, AccountInUse):
        return CtlError(f"account id already in use: {error}")
    if isinstance(error, StoreError):
        return CtlError(str(error))
    return CtlError(f"{type(error).__name__}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stdin)
    except CtlError as exc:
        for line in exc.args:
            sys.stderr.write(f"jmappushctl: error: {line}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
