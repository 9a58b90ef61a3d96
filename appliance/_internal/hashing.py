"""Parallel SHA-256 of many files.

hashlib releases the GIL while it hashes large buffers, so a thread pool of one
worker per core keeps every core busy on a bundle of many files. Each file is
read in large chunks into one reused buffer (no per-chunk allocation).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> Digest:
    """SHA-256 and size of one file, calling ``progress(nbytes)`` per chunk."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
            if progress:
                progress(n)
    return Digest(size, h.hexdigest())


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def hash_files(
    root: Path,
    relpaths: Iterable[str],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Digest | OSError]:
    """Hash ``root/rel`` for every rel in parallel; an unreadable file maps to its OSError."""
    paths = list(relpaths)

    def one(rel: str) -> Digest | OSError:
        try:
            return hash_file(root / rel, progress)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
