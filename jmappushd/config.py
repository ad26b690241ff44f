"""The daemon's configuration: INI text in, one frozen and fully validated ``Config`` out.

Parsing happens once, before any port is bound (``tap.Options.postOptions``), so a daemon under
systemd refuses to start on a typo instead of warning into the journal. Every mistake becomes a
one-line ``ConfigError`` naming file, ``[section]`` and key. Nothing is read at import time: the
environment (``STATE_DIRECTORY``) is consulted only when ``parse_config`` runs.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints
from urllib.parse import SplitResult, urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from jmappushd.endpointargs import REUSEPORT, unwrap
from jmappushd.tlsfiles import check_ssl_endpoint

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_CONFIG_PATH = "/etc/jmappushd/jmappushd.ini"
DEFAULT_STATE_DIR = "/var/lib/jmappushd"
MIN_EXPIRES_MAX = 172_800  # RFC 8620 §7.2: a server MUST accept expiry at least 48 h ahead
JSON_INT_MAX = 2**53 - 1  # RFC 8620 §1.3 UnsignedInt, the range of the session's limits
URGENCIES = ("very-low", "low", "normal", "high")  # RFC 8030 §5.3


class ConfigError(Exception):
    """A one-line reason naming file, section and key.

    E.g. "/etc/x.ini: [push] push-timeout: not a number: 'abc'".
    """


# Value checks. Each takes the converted value, returns it normalised or raises ValueError with
# the problem; the caller adds file, section and key.


def _check_endpoint(text: str) -> str:
    """Parse like strports.service does, against a MemoryReactor so that no port is bound.

    The key and certificate of an ``ssl:`` endpoint are checked first for a precise reason,
    and listening on the MemoryReactor shows the port the daemon would bind (Twisted
    itself takes ``tcp:80800`` and fails only in ``bind()``). A ``reuseport:`` endpoint
    gets the checks of the one it wraps; its parser checks port and interface itself, and
    it is never listened on here, since that would bind a real socket.
    """
    scheme = text.split(":", 1)[0]
    wrapped = unwrap(text)
    if wrapped.split(":", 1)[0] == "ssl":
        try:
            check_ssl_endpoint(wrapped)
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
    reactor = MemoryReactor()
    try:
        endpoint = serverFromString(reactor, text)
    except (IndexError, KeyError):
        # systemd: endpoints look their descriptor up at parse time; outside socket activation
        # (e.g. checking the config by hand) there is none, and listening reports it later.
        if scheme != "systemd":
            raise ValueError(f"bad endpoint {text!r}") from None
        return text
    except Exception as e:
        raise ValueError(f"bad endpoint {text!r}: {e}") from None
    if scheme not in ("systemd", REUSEPORT):
        # Never "listen" on an adopted descriptor: Twisted closes the inherited socket once
        # it has adopted it, and the daemon would then have no socket to serve on.
        _check_listening_ports(reactor, endpoint, text)
    return text


def _check_listening_ports(reactor: MemoryReactor, endpoint: IStreamServerEndpoint,
                           text: str) -> None:
    try:
        endpoint.listen(Factory()).addErrback(lambda _: None)
    except Exception:  # an endpoint the MemoryReactor cannot host: nothing to check
        return
    ports = [server[0] for server in (*reactor.tcpServers, *reactor.sslServers)]
    for port in ports:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range 0-65535 in {text!r}")


def _check_listen(raw: str) -> tuple[str, ...]:
    endpoints = tuple(raw.split())
    if not endpoints:
        raise ValueError("needs at least one endpoint, e.g. tcp:8080:interface=127.0.0.1")
    return tuple(_check_endpoint(e) for e in endpoints)


def _check_public_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        raise ValueError(f"not an absolute http(s) URL: {value!r}")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"must not have a query or fragment: {value!r}")
    if parts.username is not None:
        raise ValueError(f"must not contain credentials: {value!r}")
    _check_port(parts, value)
    return value.rstrip("/")


def _check_port(parts: SplitResult, value: str) -> None:
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {value!r} (1-65535)") from None
    if port == 0:
        raise ValueError(f"bad port in {value!r} (1-65535)")


def _origin(item: str) -> str:
    """Normalise one allowed origin to the form browsers send in ``Origin``."""
    if item == "*":
        return item
    parts = urlsplit(item)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {item!r}")
    _check_port(parts, item)
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _check_networks(raw: str) -> tuple[str, ...]:
    """Addresses or CIDR networks (IPv4 or IPv6), normalised; host bits set are an error."""
    out = []
    for item in re.split(r"[\s,]+", raw):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError as e:
            raise ValueError(f"not an address or network: {item!r} ({e})") from None
    return tuple(out)


def _check_cors_origins(raw: str) -> tuple[str, ...]:
    return tuple(_origin(item) for item in re.split(r"[\s,]+", raw) if item)


def _check_ws_origins(raw: str) -> tuple[str, ...]:
    origins = _check_cors_origins(raw)
    return () if "*" in origins else origins  # "empty = any" is the one spelling consumers see


# [storage] backend values; jmappushd.store.backends has one factory for each.
STORAGE_BACKENDS = ("sqlite", "postgresql")


def _check_dsn(value: str) -> str:
    """A libpq connection URI or key/value string, parsed as libpq does (never echoed:
    it may hold a password)."""
    if not value:
        return value
    from jmappushd.store.pgconnect import parse_dsn  # psycopg only when a DSN is set

    parse_dsn(value)
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}: {value!r}")
        return value.lower()

    return check


def _check_vapid_subject(value: str) -> str:
    """RFC 8292 §2.1: a contact URI, mailto: or https:."""
    if not value:
        return value
    if value.startswith("mailto:") and "@" in value:
        return value
    if value.startswith("https:") and urlsplit(value).hostname:
        return value
    raise ValueError(f"must be a mailto: or https: URI: {value!r}")


@dataclass(frozen=True)
class _Rule:
    """How one key is validated beyond its type."""

    minimum: int = 0
    maximum: int | None = None
    check: Callable[[Any], Any] | None = None
    is_path: bool = False
    optional: bool = False  # a path whose default is "" (unset): an empty value means unset


def _opt(
    default: Any,
    minimum: int = 0,
    maximum: int | None = None,
    check: Callable[[Any], Any] | None = None,
    is_path: bool = False,
) -> Any:
    rule = _Rule(minimum, maximum, check, is_path, optional=is_path and default == "")
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class ServerConfig:
    """[server]: the public JMAP listener."""

    listen: tuple[str, ...] = _opt(("tcp:8080:interface=127.0.0.1",), check=_check_listen)
    public_url: str = _opt("http://127.0.0.1:8080", check=_check_public_url)
    state_dir: str = _opt(DEFAULT_STATE_DIR, is_path=True)
    max_open_files: int = 0  # 0 = raise the soft RLIMIT_NOFILE to the hard limit
    header_timeout: float = _opt(10.0, 0)  # s for a request's headers to arrive, 0 = no limit
    max_connections_per_address: int = 1000  # open connections from one client address, 0 = off
    trusted_proxies: tuple[str, ...] = _opt((), check=_check_networks)  # may set X-Forwarded-For
    cors_origins: tuple[str, ...] = _opt((), check=_check_cors_origins)  # every JMAP endpoint
    demo_page: bool = False  # the live demo page at /demo/ (development only)
    http2: bool = True  # offer HTTP/2 through ALPN on ssl: listeners
    # Net allocations between young garbage collections, 0 = CPython's own (daemon/gcpolicy.py)
    gc_threshold: int = _opt(50_000, 0)


@dataclass(frozen=True)
class AdminConfig:
    """[admin]: publish, health and metrics, on a listener of their own."""

    listen: tuple[str, ...] = _opt(("tcp:8081:interface=127.0.0.1",), check=_check_listen)
    token_file: str = _opt(os.path.join(DEFAULT_STATE_DIR, "admin.token"), is_path=True)


@dataclass(frozen=True)
class StorageConfig:
    """[storage]: which backend keeps the durable state, and where."""

    backend: str = _opt("sqlite", check=_choice(STORAGE_BACKENDS))
    path: str = _opt(os.path.join(DEFAULT_STATE_DIR, "jmappushd.sqlite3"), is_path=True)
    dsn: str = _opt("", check=_check_dsn)  # postgresql: libpq URI or key=value string
    password_file: str = _opt("", is_path=True)  # postgresql: one line, mode 0600
    pool_size: int = _opt(8, 1, 100)  # postgresql: connections (and threads) per daemon


@dataclass(frozen=True)
class JMAPConfig:
    """[jmap]: the core capability's limits (RFC 8620 §2), advertised in the session."""

    max_size_request: int = _opt(10_000_000, 1, JSON_INT_MAX)
    max_concurrent_requests: int = _opt(4, 1, JSON_INT_MAX)
    max_calls_in_request: int = _opt(16, 1, JSON_INT_MAX)
    max_objects_in_get: int = _opt(500, 1, JSON_INT_MAX)
    max_objects_in_set: int = _opt(500, 1, JSON_INT_MAX)
    # Not advertised (RFC 8620 has no such capability key): bytes one response may reach.
    max_size_response: int = _opt(10_000_000, 1024)


@dataclass(frozen=True)
class AuthConfig:
    """[auth]: credential checking."""

    cache_ttl: float = 60.0  # seconds
    allow_access_token: bool = True
    realm: str = "jmappushd"
    max_concurrent_kdf: int = 0  # password hashes computed at once, 0 = the CPU count
    max_queued_kdf: int = _opt(256, 1)  # waiting for a KDF slot; more get 503 + Retry-After
    max_failures: int = _opt(10, 1)  # failed logins from one address within failure-window
    failure_window: int = _opt(300, 1)  # s


@dataclass(frozen=True)
class PushConfig:
    """[push]: PushSubscription policy and Web Push delivery."""

    push_max_total: int = _opt(100, 1)
    push_attempts_max: int = _opt(3, 1)
    push_attempt_interval: int = 60_000  # ms
    push_retry_interval: int = _opt(1_000, 1)  # ms
    push_timeout: int = _opt(10_000, 1)  # ms
    push_verify_timeout: int = _opt(60_000, 1)  # ms
    push_throttle: int = 1_000  # ms, 0 = off
    allow_private_urls: bool = False
    expires_max: int = _opt(604_800, MIN_EXPIRES_MAX)  # s
    failing_give_up: int = _opt(86_400, 1)  # s
    create_rate: int = _opt(10, 1)  # creations per user per minute
    ttl: int = 86_400  # s
    urgency: str = _opt("normal", check=_choice(URGENCIES))
    vapid_subject: str = _opt("", check=_check_vapid_subject)
    require_keys: bool = False
    vapid_rotation_transition: int = 0  # s, 0 = old-key subscriptions end at rotation (C-V-2)
    max_in_flight: int = _opt(256, 1)  # POSTs in flight overall
    max_in_flight_per_origin: int = _opt(32, 1)  # POSTs in flight to one push service origin
    push_backoff_max: int = 3_600_000  # ms, cap of the back-off between notifications, 0 = off

    @property
    def push_attempt_interval_s(self) -> float:
        return self.push_attempt_interval / 1000

    @property
    def push_retry_interval_s(self) -> float:
        return self.push_retry_interval / 1000

    @property
    def push_timeout_s(self) -> float:
        return self.push_timeout / 1000

    @property
    def push_verify_timeout_s(self) -> float:
        return self.push_verify_timeout / 1000

    @property
    def push_throttle_s(self) -> float:
        return self.push_throttle / 1000

    @property
    def push_backoff_max_s(self) -> float:
        return self.push_backoff_max / 1000


@dataclass(frozen=True)
class EventSourceConfig:
    """[event-source]: the eventSourceUrl stream (RFC 8620 §7.3)."""

    event_source_throttle: int = 1_000  # ms, 0 = off
    ping_min: int = _opt(30, 1, 30)  # s; RFC 8620 §7.3 lets a server clamp to no more
    ping_max: int = _opt(300, 300)  # s; ... and no less (so ping-max >= ping-min)
    # Deprecated alias of [server] cors-origins, which parse_config fills from it.
    cors_origins: tuple[str, ...] = _opt((), check=_check_cors_origins)
    max_connections_per_user: int = _opt(100, 1)

    @property
    def event_source_throttle_s(self) -> float:
        return self.event_source_throttle / 1000


@dataclass(frozen=True)
class WebSocketConfig:
    """[websocket]: JMAP over WebSocket (RFC 8887)."""

    ws_client_timeout: int = _opt(10, 1)  # s
    ws_heartbeat_interval: int = _opt(5, 1)  # s
    ws_throttle: int = 1_000  # ms, 0 = off
    max_connections_per_user: int = _opt(100, 1)
    allowed_origins: tuple[str, ...] = _opt((), check=_check_ws_origins)  # empty = any

    @property
    def ws_throttle_s(self) -> float:
        return self.ws_throttle / 1000


def _check_upstream_url(value: str) -> str:
    """An absolute http(s) URL of the upstream's JMAP session resource, or empty (standalone)."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        raise ValueError(f"not an absolute http(s) URL: {value!r}")
    if parts.username is not None:
        raise ValueError(f"must not contain credentials (use reader-user): {value!r}")
    if parts.fragment:
        raise ValueError(f"must not have a fragment: {value!r}")
    _check_port(parts, value)
    return value


# [upstream] changes values: how the gateway learns that an upstream account changed.
CHANGE_SOURCES = ("publish", "cyrus-notify", "eventsource", "poll")


@dataclass(frozen=True)
class UpstreamConfig:
    """[upstream]: gateway mode, in front of an existing JMAP server (off without session-url)."""

    session_url: str = _opt("", check=_check_upstream_url)
    changes: str = _opt("publish", check=_choice(CHANGE_SOURCES))
    notify_socket: str = _opt("", is_path=True)
    reader_user: str = ""
    reader_password_file: str = _opt("", is_path=True)
    poll_interval: float = _opt(30.0, 1)  # s
    debounce: int = 200  # ms: change events for one account within it cost one state read
    timeout: int = _opt(10_000, 1)  # ms, every upstream request
    ca_file: str = _opt("", is_path=True)  # PEM bundle for an https upstream; "" = system store
    max_connections: int = _opt(32, 1)  # upstream HTTP keep-alive pool size

    @property
    def enabled(self) -> bool:
        return bool(self.session_url)

    @property
    def timeout_s(self) -> float:
        return self.timeout / 1000

    @property
    def debounce_s(self) -> float:
        return self.debounce / 1000


def _check_node_name(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}", value):
        raise ValueError("must be 1-100 letters, digits or . _ : @ - (starting with a letter "
                         "or digit), or empty for the host name plus the listen port")
    return value


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster]: this node's name and its push delivery leases (PostgreSQL only)."""

    node_name: str = _opt("", check=_check_node_name)  # "" = host name + first listen port
    lease_time: float = _opt(30.0, 3, 3600)  # s a dead node's push buckets wait for a taker


@dataclass(frozen=True)
class LogConfig:
    """[log]: what the daemon logs besides warnings and errors (twistd routes the lines)."""

    access_log: bool = True  # one line per HTTP request, never with the query string


@dataclass(frozen=True)
class Config:
    """Everything the daemon reads from its INI file; built only by parse_config/load_config."""

    path: str = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    jmap: JMAPConfig = field(default_factory=JMAPConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    push: PushConfig = field(default_factory=PushConfig)
    event_source: EventSourceConfig = field(default_factory=EventSourceConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    log: LogConfig = field(default_factory=LogConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # One line each, naming file, section and key: what is accepted but should change
    # (deprecated keys). The daemon logs them at start; check-config prints them.
    warnings: tuple[str, ...] = ()


# INI section name -> (Config attribute, dataclass), in file order.
SECTIONS: Mapping[str, tuple[str, type[Any]]] = {
    "server": ("server", ServerConfig),
    "admin": ("admin", AdminConfig),
    "storage": ("storage", StorageConfig),
    "jmap": ("jmap", JMAPConfig),
    "auth": ("auth", AuthConfig),
    "push": ("push", PushConfig),
    "event-source": ("event_source", EventSourceConfig),
    "websocket": ("websocket", WebSocketConfig),
    "log": ("log", LogConfig),
    "upstream": ("upstream", UpstreamConfig),
    "cluster": ("cluster", ClusterConfig),
}

# Keys whose INI name is not simply the field name with "_" -> "-".
_KEY_NAMES = {(AuthConfig, "allow_access_token"): "allow-access-token-query"}

_BOOLEANS: dict[str, bool] = {"true": True, "yes": True, "on": True, "1": True}
_BOOLEANS.update({"false": False, "no": False, "off": False, "0": False})

_T = TypeVar("_T", bound="DataclassInstance")


def ini_key(cls: type[Any], name: str) -> str:
    """The INI key of dataclass field ``name`` of section class ``cls``."""
    return _KEY_NAMES.get((cls, name), name.replace("_", "-"))


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse the file at ``path``; any failure is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text at byte {e.start}") from None
    return parse_config(text, path, environ)


def parse_config(text: str, path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Parse INI ``text`` (from ``path``, which anchors relative paths) into a Config.

    ``environ`` defaults to ``os.environ``, read now; only ``STATE_DIRECTORY`` is used.
    """
    env = os.environ if environ is None else environ
    parser = _read_ini(text, path)
    for section in parser.sections():
        if section not in SECTIONS:
            known = ", ".join(SECTIONS)
            hint = _did_you_mean(section, SECTIONS, "[{}]")
            raise ConfigError(f"{path}: [{section}]: unknown section{hint} (known: {known})")
    base = os.path.dirname(os.path.abspath(path))
    server = _build(ServerConfig, "server", parser, path, base, {"state_dir": _state_dir(env)})
    derived: dict[str, dict[str, Any]] = {
        "admin": {"token_file": os.path.join(server.state_dir, "admin.token")},
        "storage": {"path": os.path.join(server.state_dir, "jmappushd.sqlite3")},
    }
    parts: dict[str, Any] = {"server": server}
    for section, (attr, cls) in SECTIONS.items():
        if section != "server":
            parts[attr] = _build(cls, section, parser, path, base, derived.get(section, {}))
    _check_upstream(parts["upstream"], path)
    _check_storage(parts["storage"], path)
    _check_cluster(parts["cluster"], parts["push"], parts["storage"], path)
    _check_node_name_given(server, parts["storage"], parts["cluster"], path)
    parts["server"], warnings = _cors_alias(parser, path, server, parts["event_source"])
    return Config(path=os.path.abspath(path), warnings=warnings, **parts)


def _cors_alias(parser: configparser.ConfigParser, path: str, server: ServerConfig,
                event_source: EventSourceConfig) -> tuple[ServerConfig, tuple[str, ...]]:
    """``[event-source] cors-origins`` is the old spelling of ``[server] cors-origins``."""
    if not parser.has_option("event-source", "cors-origins"):
        return server, ()
    old, new = event_source.cors_origins, server.cors_origins
    if parser.has_option("server", "cors-origins") and set(old) != set(new):
        raise ConfigError(
            f"{path}: [event-source] cors-origins ({' '.join(old) or 'empty'}) and [server] "
            f"cors-origins ({' '.join(new) or 'empty'}) differ: keep only [server] cors-origins")
    warning = (f"{path}: [event-source] cors-origins is deprecated: use [server] cors-origins "
               "(it now applies to every JMAP endpoint: session, API and EventSource)")
    return replace(server, cors_origins=old), (warning,)


def _check_upstream(upstream: UpstreamConfig, path: str) -> None:
    """Keys of [upstream] that only make sense together."""
    if not upstream.enabled:
        for key in ("notify_socket", "reader_user", "reader_password_file", "ca_file"):
            if getattr(upstream, key):
                name = ini_key(UpstreamConfig, key)
                raise ConfigError(f"{path}: [upstream] {name}: needs session-url (gateway mode)")
        if upstream.changes != "publish":
            raise ConfigError(f"{path}: [upstream] changes: needs session-url (gateway mode)")
        return
    if upstream.changes == "cyrus-notify" and not upstream.notify_socket:
        raise ConfigError(f"{path}: [upstream] notify-socket: required with changes = cyrus-notify")
    if bool(upstream.reader_user) != bool(upstream.reader_password_file):
        raise ConfigError(f"{path}: [upstream] reader-password-file: reader-user and "
                          "reader-password-file go together")
    if upstream.changes in ("cyrus-notify", "poll", "eventsource") and not upstream.reader_user:
        raise ConfigError(f"{path}: [upstream] reader-user: required with changes = "
                          f"{upstream.changes} (the daemon reads states with it)")


def _check_storage(storage: StorageConfig, path: str) -> None:
    """Keys of [storage] that belong to one backend."""
    if storage.backend != "postgresql":
        for key in ("dsn", "password_file"):
            if getattr(storage, key):
                name = ini_key(StorageConfig, key)
                raise ConfigError(f"{path}: [storage] {name}: needs backend = postgresql")
        return
    if not storage.dsn:
        raise ConfigError(f"{path}: [storage] dsn: required with backend = postgresql "
                          "(e.g. postgresql://jmappushd@db.example/jmappushd)")
    from jmappushd.store.pgconnect import parse_dsn

    if storage.password_file and "password" in parse_dsn(storage.dsn):
        raise ConfigError(f"{path}: [storage] password-file: the dsn holds a password "
                          "too; keep it only in the password file")


def _check_cluster(cluster: ClusterConfig, push: PushConfig, storage: StorageConfig,
                   path: str) -> None:
    """A POST starts only under a lease with push-timeout left, and renewals come every
    lease-time / 3, so the lease must outlast one and a half push timeouts (twice, with
    room for a late renewal); otherwise no node could ever deliver."""
    if storage.backend != "postgresql":
        return
    if cluster.lease_time < 2 * push.push_timeout_s:
        raise ConfigError(
            f"{path}: [cluster] lease-time: {cluster.lease_time:g} s is less than twice "
            f"[push] push-timeout ({push.push_timeout_s:g} s): a node must hold a lease "
            "longer than a Web Push POST can take")
def _check_node_name_given(server: ServerConfig, storage: StorageConfig,
                           cluster: ClusterConfig, path: str) -> None:
    """Nodes sharing a port (``reuseport:``) would share the default node name."""
    shared = any(e.split(":", 1)[0] == REUSEPORT for e in server.listen)
    if shared and storage.backend == "postgresql" and not cluster.node_name:
        raise ConfigError(f"{path}: [cluster] node-name: required when [server] listen has a "
                          f"{REUSEPORT}: endpoint (the default, host name and first listen "
                          "port, would be the same on every node sharing it)")


def _state_dir(env: Mapping[str, str]) -> str:
    """systemd's StateDirectory= exports STATE_DIRECTORY (colon-separated if several)."""
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.abspath(first) if first else DEFAULT_STATE_DIR


def _read_ini(text: str, path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,  # "%" in URLs and tokens means itself
        strict=True,  # duplicate sections and keys are errors
        inline_comment_prefixes=("#", ";"),
        default_section="\0",  # a literal [DEFAULT] is then just an unknown section
    )
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"{path}: [{e.section}]: duplicate section (line {e.lineno})") from None
    except configparser.DuplicateOptionError as e:
        where = f"[{e.section}] {e.option}"
        raise ConfigError(f"{path}: {where}: duplicate key (line {e.lineno})") from None
    except configparser.MissingSectionHeaderError as e:
        line = e.line.strip()
        raise ConfigError(f"{path}: line {e.lineno}: {line!r} comes before any [section]") from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0]
        line = text.splitlines()[lineno - 1].strip()
        section = _section_at(text, lineno)
        msg = f"{path}: [{section}] line {lineno}: expected 'key = value', got {line!r}"
        raise ConfigError(msg) from None
    return parser


def _section_at(text: str, lineno: int) -> str:
    """The section header in force at 1-based ``lineno``, for parse errors that lack it."""
    section = ""
    for line in text.splitlines()[:lineno]:
        match = re.match(r"\[([^]]*)\]", line)
        if match:
            section = match.group(1)
    return section


def _build(
    cls: type[_T],
    section: str,
    parser: configparser.ConfigParser,
    path: str,
    base: str,
    defaults: Mapping[str, Any],
) -> _T:
    """Build one section's dataclass from the keys present, rejecting unknown ones."""
    values = parser[section] if parser.has_section(section) else {}
    known = {ini_key(cls, f.name): f for f in fields(cls)}
    for key in values:
        if key not in known:
            hint = _other_sections(key) or _did_you_mean(key, known, "{}")
            raise ConfigError(f"{path}: [{section}] {key}: unknown key{hint}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = dict(defaults)
    for key, f in known.items():
        if key not in values:
            continue
        rule = f.metadata.get("rule", _Rule())
        try:
            kwargs[f.name] = _convert(values[key], hints[f.name], rule, base)
        except ValueError as e:
            problem = str(e).replace("\n", "\\n")
            raise ConfigError(f"{path}: [{section}] {key}: {problem}") from None
    return cls(**kwargs)


def _did_you_mean(name: str, known: Iterable[str], form: str) -> str:
    """"; did you mean push-throttle?" for the nearest known name, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {form.format(close[0])}?" if close else ""


def _other_sections(key: str) -> str:
    """"; it belongs in [push]" when the key is another section's."""
    owners = [f"[{section}]" for section, (_attr, cls) in SECTIONS.items()
              if any(ini_key(cls, f.name) == key for f in fields(cls))]
    return f"; it belongs in {' or '.join(owners)}" if owners else ""


def _convert(raw: str, hint: object, rule: _Rule, base: str) -> Any:
    value: Any
    if hint is bool:
        value = _to_bool(raw)
    elif hint is int:
        value = _bounded(_to_int(raw), rule)
    elif hint is float:
        value = _bounded(_to_float(raw), rule)
    elif rule.is_path:
        if not raw and rule.optional:
            return raw
        if not raw:
            raise ValueError("must not be empty")
        value = os.path.normpath(os.path.join(base, raw))
    else:
        value = raw  # strings, and lists (every tuple field has a check that splits them)
    return value if rule.check is None else rule.check(value)


def _to_bool(raw: str) -> bool:
    try:
        return _BOOLEANS[raw.lower()]
    except KeyError:
        raise ValueError(f"not a boolean (true/false/yes/no/on/off/1/0): {raw!r}") from None


def _to_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        float(raw)
    except ValueError:
        raise ValueError(f"not a number: {raw!r}") from None
    raise ValueError(f"not an integer: {raw!r}")


def _to_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {raw!r}")
    return value


def _bounded(value: float, rule: _Rule) -> Any:
    if value < rule.minimum:
        if rule.minimum == 0:
            raise ValueError(f"must not be negative: {value}")
        raise ValueError(f"must be at least {rule.minimum}: {value}")
    if rule.maximum is not None and value > rule.maximum:
        raise ValueError(f"must be at most {rule.maximum}: {value}")
    return value
