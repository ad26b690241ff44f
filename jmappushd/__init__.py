"""jmappushd: a JMAP push daemon (RFC 8620 push, RFC 8887 WebSocket, RFC 8291 Web Push)."""

__version__ = "0.1.0"
