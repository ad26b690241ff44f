"""JMAP over WebSocket (RFC 8887), built on Autobahn and mounted in the twisted.web tree.

``handshake`` authenticates and vets the HTTP upgrade; ``conversation`` is the JMAP side of
one connection (requests, push enable/disable, pushState) and does not care how its
frames travel; ``protocol`` adapts it to Autobahn over an HTTP/1.1 upgrade; ``factory``
owns the live connections; ``push`` is a connection's StateChange feed; ``messages``
and ``frames`` hold the RFC 8887 message shapes and frame bytes; ``service`` makes it a
service of the daemon.
"""
