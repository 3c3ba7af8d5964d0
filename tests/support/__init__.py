"""Helpers for the tunnel tests: deadlines, servers, in-process tunnels, processes."""
