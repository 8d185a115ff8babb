"""Scheduling: choose endpoints for a request from a snapshot. Pure code, no I/O."""
