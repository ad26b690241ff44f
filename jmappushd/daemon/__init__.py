"""The daemon: its wiring, start-up and shutdown order, and the state directory."""
