"""Copying plain files with byte progress."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance._internal.hashing import CHUNK


def copy_file(src: Path, dest: Path, advance: Callable[[int], None]) -> None:
    """Copy the bytes of ``src`` to a new file ``dest`` (no metadata, no links followed at ``dest``)."""
    with open(src, "rb") as inp, open(dest, "xb") as out:
        while chunk := inp.read(CHUNK):
            out.write(chunk)
            advance(len(chunk))
