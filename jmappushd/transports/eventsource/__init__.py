"""EventSource push (RFC 8620 §7.3): the resource, its streams and their registry."""
