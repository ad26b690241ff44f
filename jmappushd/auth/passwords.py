"""Password hashing with scrypt (memory-hard), and bearer-token generation.

The KDF is deliberately slow, so callers in the daemon run :func:`verify_password`
in a thread; the CLI may call it directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt with N=2**15, r=8, p=1 costs 32 MiB and tens of milliseconds per check.
_LOG_N = 15
_R = 8
_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_SCHEME = "scrypt"

TOKEN_PREFIX = "jmp_"  # noqa: S105 - a recognisable prefix, not a secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r + (1 << 20),
        dklen=_HASH_BYTES,
    )


def hash_password(password: str, log_n: int = _LOG_N) -> str:
    """Return a self-describing scrypt hash: ``$scrypt$ln=15,r=8,p=1$salt$hash``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, log_n, _R, _P)
    return f"${_SCHEME}$ln={log_n},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


Params = tuple[int, int, int]
"""scrypt cost parameters ``(log2 N, r, p)``."""

DEFAULT_PARAMS: Params = (_LOG_N, _R, _P)


def _decode(encoded: str) -> tuple[Params, bytes, bytes] | None:
    """The parameters, salt and digest of a hash from :func:`hash_password`, or None."""
    try:
        _, scheme, params, salt_text, hash_text = encoded.split("$")
        if scheme != _SCHEME:
            return None
        fields = dict(item.split("=", 1) for item in params.split(","))
        log_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        salt, expected = _unb64(salt_text), _unb64(hash_text)
    except (ValueError, KeyError):
        return None
    if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    return (log_n, r, p), salt, expected


def hash_parameters(encoded: str) -> Params | None:
    """The cost parameters of a stored hash; None when it is not one we can check."""
    decoded = _decode(encoded)
    return None if decoded is None else decoded[0]


def dummy_hash(params: Params = DEFAULT_PARAMS) -> str:
    """A well-formed hash with these parameters that no password matches.

    Checking a password against it costs the same KDF work as against a real hash, so
    a login for an unknown user takes as long as a wrong password for a known one. The
    digest is random rather than derived from some password: nothing can match it, and
    building it costs nothing.
    """
    log_n, r, p = params
    salt, digest = secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_HASH_BYTES)
    return f"${_SCHEME}$ln={log_n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a hash from :func:`hash_password` in constant time."""
    decoded = _decode(encoded)
    if decoded is None:
        return False
    (log_n, r, p), salt, expected = decoded
    return hmac.compare_digest(_scrypt(password, salt, log_n, r, p), expected)


def new_bearer_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe, recognisable by its prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """The SHA-256 digest under which a bearer token is stored (never the token itself)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


class DecoyHash:
    """The hash an unknown user's password is checked against.

    It follows the cost parameters of the real hashes the daemon has looked up (the
    default ones until then), so both answers cost the same KDF work; a new decoy is
    built only when those parameters change, not per login.
    """

    def __init__(self, params: Params = DEFAULT_PARAMS) -> None:
        self._params = params
        self._hash = dummy_hash(params)

    def stand_in(self, stored: str | None) -> str:
        """``stored`` when it is a hash we can check, the decoy otherwise."""
        if stored is not None:
            params = hash_parameters(stored)
            if params is not None:
                if params != self._params:
                    self._params, self._hash = params, dummy_hash(params)
                return stored
        return self._hash
