"""Where appliance keeps its state on a box (platformdirs, overridable).

    install root   $APPLIANCE_PREFIX or user_data_dir("appliance")/install
        current -> releases/<id>    the live install (symlink, switched atomically)
        previous -> releases/<id>   what `appliance rollback` returns to
        releases/<id>/receipt.json  bundle name, version, manifest digest, time, result
        receipts/                   one receipt per install attempt, kept
    runs root      $APPLIANCE_RUNS_DIR or user_data_dir("appliance")/runs
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

APP = "appliance"


def install_root(prefix: Path | None = None) -> Path:
    if prefix:
        return Path(prefix)
    env = os.environ.get("APPLIANCE_PREFIX")
    return Path(env) if env else Path(platformdirs.user_data_dir(APP)) / "install"


def runs_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: ``override``, else $APPLIANCE_RUNS_DIR, else the user data dir."""
    chosen = override or os.environ.get("APPLIANCE_RUNS_DIR")
    if chosen:
        return Path(chosen).expanduser()
    return Path(platformdirs.user_data_dir(APP)) / "runs"


def installed_version(prefix: Path | None = None) -> str | None:
    """Bundle version of the live install, or None if nothing is installed."""
    receipt = install_root(prefix) / "current" / "receipt.json"
    try:
        return json.loads(receipt.read_text())["version"]
    except FileNotFoundError:
        return None
