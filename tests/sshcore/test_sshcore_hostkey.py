"""Host keys written before this core (by asyncssh) load unchanged, same fingerprint."""

from __future__ import annotations

import asyncssh

from qanat.net.ssh import HostKey, chisel_fingerprint


def test_a_host_key_written_by_asyncssh_loads_with_the_same_fingerprint(tmp_path):
    old = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    path = tmp_path / "host_key"
    path.write_bytes(old.export_private_key())
    path.chmod(0o600)
    key = HostKey.load_or_create(path)
    assert key.key.public_blob == old.public_data
    assert key.fingerprint == chisel_fingerprint(old.public_data)


def test_a_new_host_key_is_readable_by_asyncssh(tmp_path):
    path = tmp_path / "host_key"
    key = HostKey.load_or_create(path)
    assert asyncssh.read_private_key(str(path)).public_data == key.key.public_blob
