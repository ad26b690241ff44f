"""VAPID signing and verification (RFC 8292, RFC 9749; VAPID-*, C-V-1)."""

from __future__ import annotations

import json
import os
import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from twisted.internet.task import Clock

from jmappushd.transports.webpush.b64 import b64url_decode, b64url_encode
from jmappushd.transports.webpush.ece import encrypt, public_bytes
from jmappushd.transports.webpush.vapid import VapidKey, VapidSigner, origin_of
from tests.vapid_check import parse_vapid_header, verify_vapid_header

# RFC 8292 §2.4 / §3.2 example (CHECKLIST VAPID-15).
RFC_T = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE"
    "0NTM1MjM3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0.i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMu"
    "CGSK2rpiUfnK9ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA"
)

RFC_K = ("BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClB"
         "Ps")
RFC_EXP = 1453523768
RFC_HEADER = f"vapid t={RFC_T}, k={RFC_K}"
HEADER_RE = re.compile(
    r"^vapid t=[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+, k=[A-Za-z0-9_-]{87}$")
NOW = 1_700_000_000.0
URL = "https://push.example.net/p/abc"


def make_signer(**kwargs: object) -> tuple[VapidSigner, Clock]:
    clock = Clock()
    clock.advance(NOW)
    return VapidSigner(VapidKey.generate(), clock, **kwargs), clock  # type: ignore[arg-type]


def token_parts(header: str) -> tuple[dict[str, object], dict[str, object], bytes, str]:
    token, k = parse_vapid_header(header)
    head, claims, sig = token.split(".")
    return (json.loads(b64url_decode(head)), json.loads(b64url_decode(claims)),
            b64url_decode(sig), k)


# --- the RFC example --------------------------------------------------------------------------


def test_rfc8292_example_verifies() -> None:
    """VAPID-15: the RFC 8292 §2.4 token verifies against its key and yields its claims."""
    claims = verify_vapid_header(RFC_HEADER, now=RFC_EXP - 3600,
                                 audience="https://push.example.net")
    assert claims == {"aud": "https://push.example.net", "exp": RFC_EXP,
                      "sub": "mailto:push@example.com"}


def test_rfc8292_example_exp_window() -> None:
    """VAPID-4: the example is refused after exp and when exp is more than 24 h ahead."""
    assert verify_vapid_header(RFC_HEADER, now=RFC_EXP)["exp"] == RFC_EXP
    with pytest.raises(ValueError, match="expired"):
        verify_vapid_header(RFC_HEADER, now=RFC_EXP + 1)
    with pytest.raises(ValueError, match="24 hours"):
        verify_vapid_header(RFC_HEADER, now=RFC_EXP - 86401)


def test_rfc8292_example_refused_with_other_key_or_audience() -> None:
    """A valid token under another key, or for another audience, is refused."""
    other = VapidKey.generate().public_key_b64
    with pytest.raises(ValueError, match="signature"):
        verify_vapid_header(f"vapid t={RFC_T}, k={other}", now=RFC_EXP - 60)
    with pytest.raises(ValueError, match="aud"):
        verify_vapid_header(RFC_HEADER, now=RFC_EXP - 60, audience="https://other.example")


def test_tampered_claims_fail_verification() -> None:
    """Changing the claims segment invalidates the ES256 signature."""
    head, _claims, sig = RFC_T.split(".")
    forged = b64url_encode(b'{"aud":"https://push.example.net","exp":1453523769}')
    with pytest.raises(ValueError, match="signature"):
        verify_vapid_header(f"vapid t={head}.{forged}.{sig}, k={RFC_K}", now=RFC_EXP - 60)


def test_der_signature_is_refused() -> None:
    """VAPID-2: a DER-encoded signature instead of 64-octet R||S is refused."""
    head, claims, sig = RFC_T.split(".")
    raw = b64url_decode(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    with pytest.raises(ValueError, match="64 octets"):
        verify_vapid_header(f"vapid t={head}.{claims}.{b64url_encode(der)}, k={RFC_K}",
                            now=RFC_EXP - 60)


def test_alg_other_than_es256_is_refused() -> None:
    """VAPID-2: a JWT header with alg 'none' is refused before any signature check."""
    _head, claims, sig = RFC_T.split(".")
    head = b64url_encode(b'{"typ":"JWT","alg":"none"}')
    with pytest.raises(ValueError, match="ES256"):
        verify_vapid_header(f"vapid t={head}.{claims}.{sig}, k={RFC_K}", now=RFC_EXP - 60)


def test_parse_header_forms() -> None:
    """VAPID-1: scheme is case-insensitive, quotes and unknown parameters are tolerated."""
    assert parse_vapid_header(f'Vapid realm="x", k="{RFC_K}",t={RFC_T}') == (RFC_T, RFC_K)
    for bad in (f"WebPush {RFC_T}", f"vapid t={RFC_T}", f"vapid k={RFC_K}",
                f"vapid t={RFC_T}, t={RFC_T}, k={RFC_K}", f"vapid t={RFC_T}, junk, k={RFC_K}"):
        with pytest.raises(ValueError):
            parse_vapid_header(bad)


# --- our own tokens -------------------------------------------------------------------------


def test_header_shape_and_jwt_header() -> None:
    """VAPID-1/VAPID-2: 'vapid t=<JWT>, k=<87 chars>' with header {typ: JWT, alg: ES256}."""
    signer, _clock = make_signer()
    header = signer.authorization(URL)
    assert HEADER_RE.match(header)
    head, _claims, sig, k = token_parts(header)
    assert head == {"typ": "JWT", "alg": "ES256"}
    assert len(sig) == 64
    assert k == signer.key.public_key_b64


def test_signature_verifies_with_cryptography_against_public_key() -> None:
    """VAPID-2: the R||S signature verifies with plain `cryptography` under public_key_b64."""
    signer, _clock = make_signer()
    token, k = parse_vapid_header(signer.authorization(URL))
    signing_input, _, sig_b64 = token.rpartition(".")
    sig = b64url_decode(sig_b64)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(k))
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, signing_input.encode(), ec.ECDSA(SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(der, signing_input.encode() + b"x", ec.ECDSA(SHA256()))


def test_claims_with_and_without_subject() -> None:
    """VAPID-3/4/5 and C-V-1: aud is the origin, exp = now + 12 h, sub only when configured."""
    signer, _clock = make_signer(subject="mailto:ops@example.com")
    claims = verify_vapid_header(signer.authorization(URL), now=NOW)
    assert claims == {"aud": "https://push.example.net", "exp": int(NOW) + 12 * 3600,
                      "sub": "mailto:ops@example.com"}
    plain, _clock = make_signer()
    assert "sub" not in token_parts(plain.authorization(URL))[1]


ORIGINS = [
    ("https://push.example.net:8443/p/abc", "https://push.example.net:8443"),
    ("https://push.example.net/p/abc", "https://push.example.net"),
    ("https://push.example.net:443/p/abc?x=1#f", "https://push.example.net"),
    ("https://push.example.net?x=/y", "https://push.example.net"),
    ("https://push.example.net:8443#/frag", "https://push.example.net:8443"),
    ("https://PUSH.Example.NET/x", "https://push.example.net"),
    ("https://user:pw@push.example.net/x", "https://push.example.net"),
    ("https://[2001:DB8::1]:8443/x", "https://[2001:db8::1]:8443"),
    ("http://push.example.net:80/x", "http://push.example.net"),
    ("http://push.example.net:443/x", "http://push.example.net:443"),
]


@pytest.mark.parametrize(("url", "origin"), ORIGINS)
def test_origin_of(url: str, origin: str) -> None:
    """VAPID-3: aud is scheme://host[:port], lowercase host, default port omitted, no path."""
    assert origin_of(url) == origin


def test_signer_remembers_origins_by_authority_only() -> None:
    """VAPID-3: the signer's remembered origins give the same aud as origin_of for every
    URL, asked in any order and again, however the paths and queries differ."""
    signer, _clock = make_signer(max_origins=3)  # small: the memory is cleared as it fills
    for _ in range(2):
        for url, origin in ORIGINS:
            assert verify_vapid_header(signer.authorization(url), NOW)["aud"] == origin
            same_service = url.split("#")[0] + ("&" if "?" in url else "?") + "other=1"
            assert verify_vapid_header(signer.authorization(same_service), NOW)["aud"] == origin


@pytest.mark.parametrize("url", ["/relative", "https://", "https://host:99999/", "no-scheme"])
def test_origin_of_rejects_urls_without_origin(url: str) -> None:
    """A URL without scheme and host, or with a bad port, has no origin."""
    with pytest.raises(ValueError):
        origin_of(url)


def test_aud_uses_non_default_port() -> None:
    """VAPID-3: a token for a :8443 URL carries the port in aud."""
    signer, _clock = make_signer()
    claims = verify_vapid_header(signer.authorization("https://push.example.net:8443/a"), NOW)
    assert claims["aud"] == "https://push.example.net:8443"


def test_token_reused_per_origin_then_renewed() -> None:
    """VAPID-9/C-V-1: one token per origin, reused until < 1 h remains, then replaced."""
    signer, clock = make_signer()
    first = signer.authorization("https://push.example.net/a")
    assert signer.authorization("https://push.example.net/b?x") == first
    other = signer.authorization("https://other.example.net/a")
    assert other != first
    clock.advance(11 * 3600)  # exactly 1 h left: still reused
    assert signer.authorization("https://push.example.net/c") == first
    clock.advance(1)
    renewed = signer.authorization("https://push.example.net/c")
    assert renewed != first
    assert token_parts(renewed)[1]["exp"] == int(clock.seconds()) + 12 * 3600
    assert signer.authorization("https://push.example.net/d") == renewed


def test_exp_never_more_than_24h_ahead() -> None:
    """VAPID-4: 0 < exp - now <= 86400 at every call, across renewals."""
    signer, clock = make_signer(lifetime=86400, renew_before=600)
    for _ in range(300):
        exp = token_parts(signer.authorization(URL))[1]["exp"]
        assert isinstance(exp, int)
        assert 0 < exp - clock.seconds() <= 86400
        clock.advance(997.3)


def test_clock_stepping_back_forces_renewal() -> None:
    """VAPID-4: if wall time steps backwards, a cached token that would be > lifetime away
    is replaced rather than reused."""
    signer, clock = make_signer()
    first = signer.authorization(URL)
    clock.rightNow -= 120
    second = signer.authorization(URL)
    assert second != first
    exp = token_parts(second)[1]["exp"]
    assert isinstance(exp, int)
    assert exp - clock.seconds() <= 12 * 3600


def test_cache_is_bounded_lru() -> None:
    """The per-origin cache holds at most max_origins entries, evicting the least used."""
    signer, _clock = make_signer(max_origins=2)
    a = signer.authorization("https://a.example/")
    b = signer.authorization("https://b.example/")
    assert signer.authorization("https://a.example/") == a  # a is now most recent
    signer.authorization("https://c.example/")  # evicts b
    assert signer.authorization("https://a.example/") == a
    assert signer.authorization("https://b.example/") != b


@pytest.mark.parametrize(
    "kwargs",
    [{"lifetime": 86401}, {"lifetime": 0}, {"lifetime": 3600, "renew_before": 3600},
     {"renew_before": -1}, {"subject": "ops@example.com"}, {"max_origins": 0}],
)
def test_signer_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    """VAPID-4/5: lifetime over 24 h, renew window >= lifetime, or a non-URI subject fail."""
    with pytest.raises(ValueError):
        make_signer(**kwargs)


def test_vapid_key_differs_from_encryption_keyid() -> None:
    """VAPID-7: k never equals the RFC 8291 keyid of a body sent with it."""
    signer, _clock = make_signer()
    ua = ec.generate_private_key(ec.SECP256R1())
    body = encrypt(b"{}", public_bytes(ua.public_key()), os.urandom(16))
    _, _, _, k = token_parts(signer.authorization(URL))
    assert b64url_decode(k) != body[21:86]


# --- VapidKey -------------------------------------------------------------------------------


def test_key_string_round_trip() -> None:
    """The private string reloads to the same key, public key and key id."""
    key = VapidKey.generate()
    text = key.to_private_string()
    assert len(b64url_decode(text)) == 32
    again = VapidKey.from_private_string(text + "\n")
    assert again.public_key_b64 == key.public_key_b64
    assert again.key_id == key.key_id
    assert again.to_private_string() == text


def test_public_key_format_and_key_id() -> None:
    """SES-15/VAPID-1: public_key_b64 is 87 chars of an uncompressed point; ids differ by key."""
    key = VapidKey.generate()
    assert len(key.public_key_b64) == 87
    raw = b64url_decode(key.public_key_b64)
    assert len(raw) == 65 and raw[0] == 0x04
    assert raw == key.public_key_raw
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", key.key_id)
    assert VapidKey.generate().key_id != key.key_id


def test_repr_does_not_leak_private_key() -> None:
    """repr() shows the key id only, never the private scalar."""
    key = VapidKey.generate()
    assert key.to_private_string() not in repr(key)
    assert key.key_id in repr(key)


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", b64url_encode(b"\x01" * 31), b64url_encode(b"\x00" * 32),
     b64url_encode(b"\xff" * 32)],
)
def test_from_private_string_rejects_bad_keys(text: str) -> None:
    """Wrong length, zero and out-of-range scalars and bad base64 are refused."""
    with pytest.raises(ValueError):
        VapidKey.from_private_string(text)


def test_vapid_key_requires_p256() -> None:
    """RFC 8292 §3.2: only P-256 keys are accepted."""
    with pytest.raises(ValueError, match="P-256"):
        VapidKey(ec.generate_private_key(ec.SECP384R1()))
