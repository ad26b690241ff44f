"""Gateway mode: the daemon in front of an existing JMAP server (issue 12)."""
