"""A wheel of the running appliance package, so the box installs the same code that built its bundle.

Written directly (a pure-Python wheel is a zip with METADATA, WHEEL, RECORD):
no build backend, no network, deterministic bytes for the same source (fixed
timestamps, sorted entries). Requirements stay in METADATA for the record; the
box installs it with ``--no-deps`` from the verified wheelhouse.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import appliance

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_self_wheel(out_dir: Path) -> Path:
    dist = importlib.metadata.distribution("appliance")
    version = dist.version
    info = f"appliance-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    pkg = Path(appliance.__file__).parent
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"appliance/{path.relative_to(pkg).as_posix()}", path.read_bytes()))
    metadata = dist.read_text("METADATA") or f"Metadata-Version: 2.1\nName: appliance\nVersion: {version}\n"
    files.append((f"{info}/METADATA", metadata.encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: appliance\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"appliance-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zi = zipfile.ZipInfo(name, _EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return wheel
