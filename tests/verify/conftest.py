"""Fixtures for the verify tests: one real bundle (built once from the bundle tests'
local find-links dir), copied per test so each test may tamper with its own copy."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance._internal.manifest import Manifest
from appliance._internal.seal import seal
from bundle.conftest import built, clean_osv_url, find_links  # noqa: F401  (shared session fixtures)

REPO = Path(__file__).resolve().parents[2]
VERIFY_SH = REPO / "installer" / "verify.sh"


@pytest.fixture
def bundle(built, tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of the built bundle."""
    out = tmp_path / "bundle"
    shutil.copytree(built[0], out)
    return out


@pytest.fixture
def keyring(gpg_keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys 0 and 1 are trusted; key 2 is unknown to the box."""
    return gpg_keys.keyring(0, 1, path=tmp_path_factory.mktemp("kr") / "keyring.gpg")


@pytest.fixture
def reseal(gpg_keys) -> Callable[..., Manifest]:
    """Re-seal a bundle after a change, as a (malicious or buggy) signer would: ``reseal(dir, **meta)``."""

    def run(root: Path, *, keys: tuple[int, ...] = (0,), **changes) -> Manifest:
        old = Manifest.model_validate_json((root / "manifest.json").read_text())
        meta = old.model_dump(by_alias=True, exclude={"files"}) | changes
        return seal(root, meta, keys=[gpg_keys.keys[i].fingerprint for i in keys], homedir=gpg_keys.homedir)

    return run


def later(days: int) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)
