"""Web Push: PushSubscription methods and the delivery service (RFC 8620 §7.2, RFC 8291,
RFC 8292, RFC 9749). ``jmappushd.transports.webpush.service.install`` wires it into the daemon."""
