"""Fixtures of the interop tests; they live in interopbed.py."""

from interopbed import bed, clients, peers

__all__ = ["bed", "clients", "peers"]
