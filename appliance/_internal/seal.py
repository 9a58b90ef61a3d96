"""Seal a bundle directory: hash every file, write manifest.json and SHA256SUMS, sign.

Sealing is the last step of ``bundle build`` and the only code that writes the
signed index, so a bundle built by any path (tests included) has one format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.errors import BundleError
from appliance._internal.gpg import sign_detached
from appliance._internal.hashing import hash_files, sha256_bytes
from appliance._internal.manifest import (
    MANIFEST,
    SIG_DIR,
    SUMS,
    FileEntry,
    Manifest,
    UnsafePath,
    check_relpath,
    format_sums,
)


def content_files(root: Path) -> list[str]:
    """Every regular file under ``root`` except the index, as sorted bundle paths.

    Symlinks and special files are refused: a bundle holds plain files only.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            p = base / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise BundleError(f"{rel}: symbolic links are not allowed in a bundle")
            if name in filenames and not p.is_file():
                raise BundleError(f"{rel}: not a regular file")
        for name in filenames:
            rel = (base / name).relative_to(root).as_posix()
            if rel in (MANIFEST, SUMS) or rel.startswith(SIG_DIR + "/"):
                continue
            try:
                out.append(check_relpath(rel))
            except UnsafePath as exc:
                raise BundleError(f"{rel}: {exc}") from exc
    return sorted(out)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seal(
    root: Path,
    meta: dict[str, Any],
    *,
    keys: list[str],
    homedir: Path | None = None,
) -> Manifest:
    """Write manifest.json (``meta`` plus the file list), SHA256SUMS and one signature per key.

    ``meta`` holds every Manifest field but ``files``. Returns the manifest.
    """
    rels = content_files(root)
    digests = hash_files(root, rels)
    files = []
    for rel in rels:
        d = digests[rel]
        if isinstance(d, OSError):
            raise BundleError(f"{rel}: cannot read: {d.strerror}")
        files.append(FileEntry(path=rel, size=d.size, sha256=d.sha256))
    manifest = Manifest.model_validate({**meta, "files": [f.model_dump() for f in files]})
    data = manifest.to_json().encode()
    _write(root / MANIFEST, data)
    sums = {f.path: f.sha256 for f in files} | {MANIFEST: sha256_bytes(data)}
    _write(root / SUMS, format_sums(sums).encode())
    sigdir = root / SIG_DIR
    sigdir.mkdir(exist_ok=True)
    for old in sigdir.iterdir():
        old.unlink()
    for fpr in keys:
        sign_detached(root / SUMS, sigdir / f"{fpr}.asc", fpr, homedir)
    return manifest
