"""Shared fixtures: real OpenPGP keys made with real gpg, and the offline guard.

The suite is meant to run inside a network namespace with only loopback
(``unshare -n``; see README). ``APPLIANCE_REQUIRE_OFFLINE=1`` (set by
scripts/test.sh) makes the session fail at start if a route off the box exists.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance._internal.gpg import export_keyring, generate_key


def _has_route_off_box() -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: connect() on UDP only needs a route
        return True
    except OSError:
        return False
    finally:
        s.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("APPLIANCE_REQUIRE_OFFLINE") == "1" and _has_route_off_box():
        raise pytest.UsageError("APPLIANCE_REQUIRE_OFFLINE=1 but a network route exists: run under `unshare -n`")


@dataclass(frozen=True)
class Key:
    fingerprint: str
    uid: str


@dataclass(frozen=True)
class Keys:
    """A gpg home holding secret keys, and a public keyring file for gpgv."""

    homedir: Path
    keys: list[Key]

    def keyring(self, *which: int, path: Path) -> Path:
        """Export the public keys ``which`` (indexes; all when empty) as a binary keyring."""
        return export_keyring(self.homedir, [self.keys[i].fingerprint for i in (which or range(len(self.keys)))], path)


def make_keys(homedir: Path, n: int) -> Keys:
    uids = [f"Appliance Test Signer {i} <signer{i}@appliance.invalid>" for i in range(n)]
    return Keys(homedir, [Key(generate_key(homedir, uid), uid) for uid in uids])


@pytest.fixture(scope="session")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Three signing keys; index 2 is treated as 'unknown' by tests that leave it out of the keyring."""
    home = tmp_path_factory.mktemp("gnupg")
    keys = make_keys(home, 3)
    yield keys
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
