"""A POST body is never parsed as an HTML form (issue 16: Twisted's form parsing read
every POST's Content-Type with the email package, the largest cost of an API call).

No endpoint takes form posts, so ``request.args`` holds the query string only: an
``access_token`` sent in a form-encoded body is not a credential (RFC 6750 §2.2 is
not offered; ``[auth] allow-access-token-query`` names the query), the body reaches
the resource untouched."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from jmappushd.web.site import JMAPSite


class Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[bytes, list[bytes]], bytes]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append((dict(request.args), request.content.read()))
        return b"{}"


def post(site: JMAPSite, path: bytes, body: bytes, content_type: bytes) -> bytes:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (path, content_type, len(body), body))
    return transport.value()


def test_a_form_body_is_not_parsed_into_args() -> None:
    recorder = Recorder()
    site = JMAPSite(recorder, max_body=1000, name="jmap", access_log=False)
    body = b"access_token=secret&x=1"
    for ctype in (b"application/x-www-form-urlencoded",
                  b"multipart/form-data; boundary=zz"):
        assert post(site, b"/jmap/api/", body, ctype).startswith(b"HTTP/1.1 200")
    assert recorder.seen == [({}, body), ({}, body)]
    post(site, b"/jmap/api/?access_token=q", b"{}", b"application/json")
    assert recorder.seen[-1] == ({b"access_token": [b"q"]}, b"{}")


def test_the_site_may_still_be_asked_to_parse_forms() -> None:
    """The default is ours, not a removal: a caller can pass Twisted's keyword."""
    recorder = Recorder()
    site = JMAPSite(recorder, max_body=1000, name="x", access_log=False,
                    parsePOSTFormSubmission=True)
    post(site, b"/", b"a=1", b"application/x-www-form-urlencoded")
    assert recorder.seen == [({b"a": [b"1"]}, b"a=1")]
