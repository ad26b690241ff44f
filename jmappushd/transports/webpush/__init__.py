"""Web Push: PushSubscription methods and the delivery service (RFC 8620 §7.2, RFC 8291,
RFC 8292, RFC 9749). ``service`` makes it a service of the daemon; ``delivery`` decides,
``attempt`` sends within the ``slots`` caps, ``schedule`` owns the timers."""
