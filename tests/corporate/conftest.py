"""Fixtures of the corporate-network tests (defined in corpfixtures.py)."""

from corpfixtures import _logs, certs, microsocks, tinyproxy

__all__ = ["_logs", "certs", "microsocks", "tinyproxy"]
