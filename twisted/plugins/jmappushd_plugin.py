"""twistd plugin for jmappushd; kept tiny so ``twistd --help`` stays fast."""

from twisted.application.service import ServiceMaker

jmappushd = ServiceMaker(
    "jmappushd",
    "jmappushd.tap",
    "JMAP push daemon: EventSource, WebSocket and Web Push (RFC 8620, 8887, 8291)",
    "jmappushd",
)
