"""RFC 8291 / RFC 8188 message encryption (ENC-*, PS-2, C-PS-4) and base64url helpers."""

from __future__ import annotations

import os

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jmappushd.transports.webpush import ece
from jmappushd.transports.webpush.b64 import b64url_decode, b64url_encode
from jmappushd.transports.webpush.ece import (
    MAX_PLAINTEXT,
    InvalidKeys,
    derive_ikm,
    encrypt,
    parse_subscription_keys,
    public_bytes,
    seal,
)
from tests.ece_decrypt import decrypt, unseal

# RFC 8291 Appendix A, as recomputed in CHECKLIST §5.4.
PLAINTEXT = b"When I grow up, I want to be a watermelon"
AS_PUBLIC = ("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3j"
             "l7A8")
AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
UA_PUBLIC = ("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIA"
             "iw4")
UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
SALT = "DGv6ra1nlYgDCS1FRnbzlw"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
ECDH_SECRET = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"
IKM = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg"
CEK_HEX = "a088555b4e0c45dcb65cdf4288a2f14e"
NONCE_HEX = "e21ffde6495727913faa7a0d"
BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAm"
    "S6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxs"
    "j_Qulcy4a-fN"
)


def private_key(b64: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(b64url_decode(b64), "big"), ec.SECP256R1())


def new_receiver() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, public_bytes(key.public_key()), os.urandom(16)


def vector_body(**kwargs: object) -> bytes:
    return encrypt(PLAINTEXT, b64url_decode(UA_PUBLIC), b64url_decode(AUTH),
                   sender_private=private_key(AS_PRIVATE), salt=b64url_decode(SALT),
                   **kwargs)  # type: ignore[arg-type]


# --- RFC vectors -------------------------------------------------------------------------


def test_rfc8291_appendix_a_body_byte_for_byte() -> None:
    """ENC-3/ENC-4/ENC-6: with the Appendix A inputs the body equals the published 144 octets."""
    body = vector_body()
    assert len(body) == 144
    assert b64url_encode(body) == BODY


def test_rfc8291_appendix_a_intermediate_values() -> None:
    """ENC-3: ECDH secret, IKM, CEK and NONCE equal the Appendix A intermediates."""
    sender = private_key(AS_PRIVATE)
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(UA_PUBLIC))
    secret = sender.exchange(ec.ECDH(), ua_key)
    assert b64url_encode(secret) == ECDH_SECRET
    assert b64url_encode(public_bytes(sender.public_key())) == AS_PUBLIC
    ikm = derive_ikm(secret, b64url_decode(AUTH), b64url_decode(UA_PUBLIC),
                     b64url_decode(AS_PUBLIC))
    assert b64url_encode(ikm) == IKM
    cek, nonce = ece._cek_nonce(ikm, b64url_decode(SALT))
    assert (cek.hex(), nonce.hex()) == (CEK_HEX, NONCE_HEX)


def test_rfc8291_vector_with_parsed_public_key_is_identical() -> None:
    """Passing a pre-parsed ua_public_key (the fast path) gives the same bytes."""
    key, _raw, _auth = parse_subscription_keys(UA_PUBLIC, AUTH)
    assert b64url_encode(vector_body(ua_public_key=key)) == BODY


def test_rfc8291_vector_decrypts_with_our_decrypt_and_http_ece() -> None:
    """ENC-6: the published body decrypts with our decryptor and the independent http_ece."""
    body = b64url_decode(BODY)
    ua = private_key(UA_PRIVATE)
    assert decrypt(body, ua, b64url_decode(AUTH)) == PLAINTEXT
    assert http_ece.decrypt(body, private_key=ua, auth_secret=b64url_decode(AUTH),
                            version="aes128gcm") == PLAINTEXT


def test_rfc8188_section_3_1_vector() -> None:
    """RFC 8188 §3.1: seal() with the example IKM/salt gives the published 53-octet body."""
    ikm = b64url_decode("yqdlZ-tYemfogSmv7Ws5PQ")
    salt = b64url_decode("I1BsxtFttlv3u_Oo94xnmw")
    expected = "I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg"
    body = seal(b"I am the walrus", ikm, salt, rs=4096)
    assert b64url_encode(body) == expected
    assert len(body) == 53
    assert unseal(body, ikm) == (b"I am the walrus", b"")


# --- round trips and layout ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 1000, MAX_PLAINTEXT])
def test_round_trip_through_http_ece_and_our_decrypt(size: int) -> None:
    """ENC-6: fresh encryptions decrypt to the plaintext with http_ece and with decrypt()."""
    ua, raw, auth = new_receiver()
    plaintext = os.urandom(size)
    body = encrypt(plaintext, raw, auth)
    assert http_ece.decrypt(body, private_key=ua, auth_secret=auth,
                            version="aes128gcm") == plaintext
    assert decrypt(body, ua, auth) == plaintext


def test_http_ece_encrypted_body_decrypts_with_ours() -> None:
    """Our decryptor reads a body produced by the independent http_ece encrypter."""
    ua, raw, auth = new_receiver()
    sender = ec.generate_private_key(ec.SECP256R1())
    body = http_ece.encrypt(b'{"@type":"StateChange"}', private_key=sender, dh=raw,
                            auth_secret=auth, version="aes128gcm")
    assert decrypt(body, ua, auth) == b'{"@type":"StateChange"}'


def test_each_encryption_has_fresh_salt_and_sender_key() -> None:
    """ENC-2: two encryptions of the same payload differ in salt and keyid."""
    _ua, raw, auth = new_receiver()
    first, second = encrypt(b"same", raw, auth), encrypt(b"same", raw, auth)
    assert first[:16] != second[:16]
    assert first[21:86] != second[21:86]


def test_header_layout() -> None:
    """ENC-4/ENC-5: salt(16) | rs(4, big-endian) | idlen=65 | keyid=sender point; one record."""
    _ua, raw, auth = new_receiver()
    body = encrypt(b"x" * 50, raw, auth, rs=1000)
    assert int.from_bytes(body[16:20], "big") == 1000
    assert body[20] == 65
    assert body[21] == 0x04
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), body[21:86])
    assert len(body) == 86 + 50 + 1 + 16


def test_max_plaintext_fits_a_4096_octet_body() -> None:
    """ENC-7: 3993 octets of plaintext make exactly a 4096-octet body; 3994 is refused."""
    _ua, raw, auth = new_receiver()
    assert MAX_PLAINTEXT == 3993
    assert len(encrypt(b"a" * MAX_PLAINTEXT, raw, auth)) == 4096
    with pytest.raises(ValueError, match="3993"):
        encrypt(b"a" * (MAX_PLAINTEXT + 1), raw, auth)


def test_record_size_must_exceed_plaintext_plus_17() -> None:
    """RFC 8291 §4 (ENC-5): rs must be greater than plaintext + delimiter + tag."""
    ua, raw, auth = new_receiver()
    with pytest.raises(ValueError, match="rs"):
        encrypt(b"a" * 83, raw, auth, rs=100)
    body = encrypt(b"a" * 82, raw, auth, rs=100)
    assert decrypt(body, ua, auth) == b"a" * 82


def test_seal_refuses_bad_parameters() -> None:
    """RFC 8188 §2: rs below 18, a salt that is not 16 octets or an overlong record fail."""
    with pytest.raises(ValueError, match="rs"):
        seal(b"", b"k" * 16, b"s" * 16, rs=17)
    with pytest.raises(ValueError, match="salt"):
        seal(b"", b"k" * 16, b"s" * 15)
    with pytest.raises(ValueError, match="record"):
        seal(b"a" * 10, b"k" * 16, b"s" * 16, rs=26)


def test_encrypt_refuses_bad_auth_length() -> None:
    """An auth secret that is not 16 octets is a programming error, not silently used."""
    _ua, raw, _auth = new_receiver()
    with pytest.raises(ValueError, match="auth"):
        encrypt(b"x", raw, b"short")


# --- decryptor rejections -----------------------------------------------------------------


def test_decrypt_rejects_tampering_and_wrong_secret() -> None:
    """A flipped ciphertext bit or a wrong auth secret fails the GCM tag check."""
    ua, raw, auth = new_receiver()
    body = bytearray(encrypt(b"hello", raw, auth))
    with pytest.raises(ValueError, match="tag"):
        decrypt(bytes(body), ua, os.urandom(16))
    body[-1] ^= 1
    with pytest.raises(ValueError, match="tag"):
        decrypt(bytes(body), ua, auth)


def test_decrypt_rejects_bad_headers() -> None:
    """A short body, idlen other than 65, or more than one record is refused."""
    ua, raw, auth = new_receiver()
    body = encrypt(b"hello", raw, auth, rs=30)
    with pytest.raises(ValueError):
        decrypt(body[:20], ua, auth)
    with pytest.raises(ValueError, match="keyid"):
        decrypt(body[:20] + b"\x40" + body[21:], ua, auth)
    with pytest.raises(ValueError, match="more than one record"):
        decrypt(body + b"\x00" * 20, ua, auth)


def test_unseal_rejects_non_final_delimiter() -> None:
    """ENC-6: a last record whose delimiter is 0x01 (not 0x02) is rejected."""
    ikm, salt = os.urandom(16), os.urandom(16)
    cek, nonce = ece._cek_nonce(ikm, salt)
    record = AESGCM(cek).encrypt(nonce, b"data\x01\x00\x00", None)
    body = salt + (4096).to_bytes(4, "big") + b"\x00" + record
    with pytest.raises(ValueError, match="0x02"):
        unseal(body, ikm)


def test_unseal_strips_padding() -> None:
    """RFC 8188 §2: zero padding after the 0x02 delimiter is removed."""
    ikm, salt = os.urandom(16), os.urandom(16)
    cek, nonce = ece._cek_nonce(ikm, salt)
    record = AESGCM(cek).encrypt(nonce, b"data\x00\x02\x00\x00\x00", None)
    body = salt + (4096).to_bytes(4, "big") + b"\x00" + record
    assert unseal(body, ikm) == (b"data\x00", b"")


# --- subscription key validation (PS-2, C-PS-4) -------------------------------------------


def test_parse_keys_accepts_unpadded_and_padded() -> None:
    """C-PS-4: keys are accepted with or without '=' padding and decode to the same bytes."""
    key, raw, auth = parse_subscription_keys(UA_PUBLIC, AUTH)
    assert raw == b64url_decode(UA_PUBLIC) and len(raw) == 65
    assert auth == b64url_decode(AUTH) and len(auth) == 16
    assert public_bytes(key) == raw
    padded = parse_subscription_keys(UA_PUBLIC + "=", AUTH + "==")
    assert padded[1:] == (raw, auth)


@pytest.mark.parametrize(
    ("p256dh", "auth", "message"),
    [
        ("not*base64", AUTH, "p256dh is not valid base64url"),
        (UA_PUBLIC.replace("_", "/"), AUTH, "p256dh is not valid base64url"),
        (UA_PUBLIC, "BTBZMqHH6r4T ts7J_aSIgg", "auth is not valid base64url"),
        (UA_PUBLIC[:-4], AUTH, "65 octets"),
        (b64url_encode(b"\x02" + b64url_decode(UA_PUBLIC)[1:33]), AUTH, "65 octets"),
        (b64url_encode(b"\x05" + b64url_decode(UA_PUBLIC)[1:]), AUTH, "uncompressed"),
        (UA_PUBLIC, b64url_encode(b"x" * 15), "16 octets"),
        (UA_PUBLIC, b64url_encode(b"x" * 17), "16 octets"),
    ],
)
def test_parse_keys_rejects_malformed(p256dh: str, auth: str, message: str) -> None:
    """PS-2/C-PS-4: bad base64url, wrong lengths and non-uncompressed points are refused."""
    with pytest.raises(InvalidKeys, match=message):
        parse_subscription_keys(p256dh, auth)


def test_parse_keys_rejects_point_not_on_curve() -> None:
    """RFC 8291 §7 (PS-2): a 65-octet point that is not on P-256 is refused."""
    raw = bytearray(b64url_decode(UA_PUBLIC))
    raw[-1] ^= 1
    with pytest.raises(InvalidKeys, match="not a point on P-256"):
        parse_subscription_keys(b64url_encode(bytes(raw)), AUTH)
    assert issubclass(InvalidKeys, ValueError)


def test_encrypt_validates_raw_public_key_when_not_parsed() -> None:
    """Without ua_public_key, encrypt() still refuses a point off the curve."""
    raw = bytearray(b64url_decode(UA_PUBLIC))
    raw[-1] ^= 1
    with pytest.raises(InvalidKeys):
        encrypt(b"x", bytes(raw), os.urandom(16))


# --- base64url ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(0, 7))
def test_b64url_round_trip_without_padding(size: int) -> None:
    """b64url_encode never pads and b64url_decode inverts it for every length remainder."""
    data = os.urandom(size)
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("bad", ["a", "abcde", "ab=", "ab===", "a+b/", "ab cd", "ab\n", "é", "=="])
def test_b64url_decode_rejects_bad_input(bad: str) -> None:
    """Wrong length, wrong padding, standard alphabet, whitespace and non-ASCII are refused."""
    with pytest.raises(ValueError):
        b64url_decode(bad)


def test_b64url_decode_accepts_correct_padding() -> None:
    """Correctly padded input ('ab==', 'abc=') is accepted."""
    assert b64url_decode("ab==") == b64url_decode("ab")
    assert b64url_decode("abc=") == b64url_decode("abc")
