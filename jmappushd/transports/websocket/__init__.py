"""JMAP over WebSocket (RFC 8887), built on Autobahn and mounted in the twisted.web tree.

``handshake`` authenticates and vets the HTTP upgrade, ``factory`` owns the live
connections and the policies shared by them, ``protocol`` frames one connection,
``push`` holds a connection's StateChange subscription and ``messages`` the
RFC 8887 message shapes. :func:`jmappushd.transports.websocket.service.install` wires them into the
service.
"""
