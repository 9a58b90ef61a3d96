"""Write small, valid wheels for tests: any name, version, tag and dependencies.

    make_wheel(dest, "alpha", "1.0", requires=["beta>=1"])           # py3-none-any
    make_wheel(dest, "fast", "2.0", tag="cp311-cp311-manylinux_2_17_x86_64")

Each wheel holds an importable package ``<name>`` (``__version__`` set) plus
METADATA, WHEEL and a RECORD with sha256 digests, so pip and uv install it.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from packaging.utils import canonicalize_name


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    dest: Path,
    name: str,
    version: str,
    *,
    tag: str = "py3-none-any",
    requires: list[str] | tuple[str, ...] = (),
    body: str = "",
) -> Path:
    """Write ``dest/<name>-<version>-<tag>.whl`` and return its path."""
    dist = canonicalize_name(name).replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
         *(f"Requires-Dist: {r}\n" for r in requires)]
    )
    pure = "true" if tag.endswith("-none-any") else "false"
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n{body}",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: wheelfactory\nRoot-Is-Purelib: {pure}\nTag: {tag}\n",
    }
    record = "".join(f"{p},{_record_hash(c.encode())},{len(c.encode())}\n" for p, c in files.items())
    files[f"{info}/RECORD"] = record + f"{info}/RECORD,,\n"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, c in files.items():
            zf.writestr(zipfile.ZipInfo(p, date_time=(2020, 1, 1, 0, 0, 0)), c)
    return path
