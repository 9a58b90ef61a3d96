"""The bundle's signed index: ``manifest.json``, ``SHA256SUMS`` and ``signatures/``.

Layout of a bundle directory (docs/bundle-format.md has the full description)::

    manifest.json        schema-versioned: version, created, expires, targets, every file
    SHA256SUMS           `sha256sum -c` format: every file, manifest.json included
    signatures/*.asc     detached OpenPGP signatures of SHA256SUMS, one file per key
    lockfiles/ wheelhouse/ sbom/ audit/ images/ models/

Trust flows one way: signatures -> SHA256SUMS -> manifest.json and every file.
SHA256SUMS and signatures/ are the only files not listed in SHA256SUMS.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SIG_DIR = "signatures"
SCHEMA = "appliance.manifest/1"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) ([ *])(.+)$")
# Conservative portable names: no spaces, quotes, backslashes or control characters.
_SAFE_PART = re.compile(r"^[A-Za-z0-9._+@=~-]+$")


class UnsafePath(ValueError):
    pass


def check_relpath(rel: str) -> str:
    """Refuse anything but a plain relative POSIX path inside the bundle."""
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise UnsafePath("absolute or malformed path")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath("path with '..', '.' or an empty component")
    if not all(_SAFE_PART.match(p) for p in parts):
        raise UnsafePath("path with characters outside [A-Za-z0-9._+@=~-]")
    return str(PurePosixPath(rel))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Model):
    path: str
    size: Annotated[int, Field(ge=0)]
    sha256: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        try:
            return check_relpath(value)
        except UnsafePath as exc:
            raise ValueError(f"{value!r}: {exc}") from exc

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _HEX64.match(value):
            raise ValueError("expected 64 lowercase hex digits")
        return value


class TargetEntry(_Model):
    python: str
    platform: str


class AuditEntry(_Model):
    """What the vulnerability audit found at build time."""

    tool: str = "pip-audit"
    report: str | None  # bundle path of the JSON report, None only if waived without running
    status: Literal["clean", "vulnerable", "waived"]
    vulnerabilities: Annotated[int, Field(ge=0)] = 0
    service: str | None = None  # e.g. "osv http://127.0.0.1:8080/v1/query" or "pypi"
    waiver_reason: str | None = None


class ImageEntry(_Model):
    name: str
    ref: str
    digest: str
    role: str = "other"
    path: str  # bundle path of the OCI archive / layout


class ModelEntry(_Model):
    name: str
    path: str  # bundle directory


class SigningEntry(_Model):
    threshold: Annotated[int, Field(ge=1)] = 1
    keys: list[str] = Field(default_factory=list)


class Manifest(_Model):
    schema_: Literal["appliance.manifest/1"] = Field(SCHEMA, alias="schema")
    name: str
    version: str
    created: dt.datetime
    expires: dt.datetime
    targets: list[TargetEntry]
    requirements: list[str] = Field(default_factory=list)
    images: list[ImageEntry] = Field(default_factory=list)
    models: list[ModelEntry] = Field(default_factory=list)
    audit: AuditEntry
    signing: SigningEntry = Field(default_factory=SigningEntry)
    files: list[FileEntry]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


def format_sums(entries: dict[str, str]) -> str:
    """``sha256sum`` output for {path: hex}, sorted by path, binary mode marker."""
    return "".join(f"{digest} *{path}\n" for path, digest in sorted(entries.items()))


def parse_sums(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """Parse SHA256SUMS strictly: returns ({path: hex}, [(line number, problem)])."""
    entries: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = _SUMS_LINE.match(line)
        if not m:
            problems.append((n, "malformed line"))
            continue
        digest, _, path = m.groups()
        try:
            path = check_relpath(path)
        except UnsafePath as exc:
            problems.append((n, f"{path!r}: {exc}"))
            continue
        if path in entries:
            problems.append((n, f"{path}: listed twice"))
            continue
        entries[path] = digest
    return entries, problems


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
