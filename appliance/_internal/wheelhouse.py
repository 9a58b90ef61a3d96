"""Fetch locked wheels into the wheelhouse, each checked against its lock hash first.

Every wheel is fetched once into ``wheelhouse/.incoming/``, hashed, compared with
the sha256 (and size, when the lock gives one) the lock recorded, and only then
renamed into ``wheelhouse/``. A mismatch is an error naming the file; nothing
unchecked ever sits in the wheelhouse.

Sources are pluggable (:class:`Fetcher`): local paths and ``file://`` URLs are
copied, ``http(s)://`` URLs are streamed with httpx (timeouts, retries).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httpx

from appliance.errors import BundleError
from appliance._internal.files import copy_file
from appliance._internal.hashing import CHUNK, Digest, hash_file
from appliance._internal.progress import Progress
from appliance._internal.pylock import Wheel

Advance = Callable[[int], None]


class Fetcher(Protocol):
    """Writes the bytes of one source to ``dest``, reporting bytes as they arrive."""

    def fetch(self, source: str, dest: Path, advance: Advance) -> None: ...


class LocalFetcher:
    """Local paths and ``file://`` URLs (relative paths resolve against ``base``)."""

    def __init__(self, base: Path):
        self.base = base

    def path(self, source: str) -> Path:
        return Path(unquote(urlsplit(source).path)) if source.startswith("file:") else self.base / source

    def fetch(self, source: str, dest: Path, advance: Advance) -> None:
        path = self.path(source)
        try:
            copy_file(path, dest, advance)
        except OSError as exc:
            raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from exc


class HttpFetcher:
    """``http(s)://`` URLs, streamed; transient failures are retried with backoff."""

    def __init__(self, *, retries: int = 3, timeout: float = 30.0):
        self.retries = retries
        self.client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True)

    def fetch(self, source: str, dest: Path, advance: Advance) -> None:
        for attempt in range(1, self.retries + 1):
            received = 0
            try:
                with self.client.stream("GET", source) as resp, open(dest, "wb") as out:
                    resp.raise_for_status()
                    for chunk in resp.iter_bytes(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        advance(len(chunk))
                return
            except httpx.HTTPError as exc:
                advance(-received)
                if attempt == self.retries or (
                    isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500
                ):
                    raise BundleError(f"{source}: download failed: {exc}") from exc
                time.sleep(attempt)


def _local_size(local: LocalFetcher, source: str) -> int:
    try:
        return local.path(source).stat().st_size
    except OSError:
        return 0  # reported when the copy fails


def fetch_wheels(wheels: Iterable[Wheel], wheelhouse: Path, *, base: Path, progress: bool = True) -> dict[str, Digest]:
    """Fetch and check every wheel into ``wheelhouse``; returns {file: digest}."""
    wheels = list(wheels)
    incoming = wheelhouse / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    local, http = LocalFetcher(base), HttpFetcher()
    remote = {w.file for w in wheels if urlsplit(w.source).scheme in ("http", "https")}
    total = sum(w.size or (0 if w.file in remote else _local_size(local, w.source)) for w in wheels)
    bar = Progress(f"fetching {len(wheels)} wheels", total, enabled=progress)
    digests = {}
    try:
        for wheel in wheels:
            fetcher: Fetcher = http if wheel.file in remote else local
            tmp = incoming / wheel.file
            fetcher.fetch(wheel.source, tmp, bar.advance)
            digest = hash_file(tmp)
            if digest.sha256 != wheel.sha256 or (wheel.size is not None and digest.size != wheel.size):
                raise BundleError(
                    f"{wheel.file}: does not match the lock (sha256 {digest.sha256}, size {digest.size}; "
                    f"locked sha256 {wheel.sha256}, size {wheel.size}): refused"
                )
            tmp.rename(wheelhouse / wheel.file)
            digests[wheel.file] = digest
    finally:
        http.client.close()
        shutil.rmtree(incoming, ignore_errors=True)
        bar.close()
    return digests
