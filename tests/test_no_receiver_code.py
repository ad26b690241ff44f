"""The package ships only the sending side: receiver code used by tests lives in tests/."""

from __future__ import annotations

from jmappushd.transports.eventsource import sse
from jmappushd.transports.webpush import ece, vapid
from tests import ece_decrypt, sse_parser, vapid_check


def test_receiver_code_is_not_in_the_product() -> None:
    """Decryption, VAPID verification and SSE parsing are test helpers, not product API."""
    for module, names in ((ece, ("decrypt", "unseal", "_split", "_open")),
                          (vapid, ("verify_vapid_header", "parse_vapid_header")),
                          (sse, ("EventParser", "Event"))):
        present = [name for name in names if hasattr(module, name)]
        assert present == [], (module.__name__, present)
    assert callable(ece_decrypt.decrypt) and callable(vapid_check.verify_vapid_header)
    assert callable(sse_parser.EventParser)
