"""Authentication: twisted.cred checkers for Basic and bearer credentials, and the Principal."""
