"""Cheap timers and writes for many idle connections, and the guarded fast paths."""
