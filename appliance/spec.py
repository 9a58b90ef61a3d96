"""The bundle spec: ``appliance.toml``, parsed and validated by pydantic.

A spec says what one bundle carries: Python requirements, the targets they are
vendored for, container images pinned by digest, model directories, signing
keys, and the bundle's version and expiry. Unknown keys are refused, and every
error names the offending key (``targets.1.platform: ...``).

    spec = load_spec(Path("appliance.toml"))   # or default_spec()
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.errors import SpecError

_PLATFORM_RE = re.compile(r"^manylinux_(\d+)_(\d+)_(x86_64|aarch64)$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_FPR_RE = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundleInfo(_Model):
    name: Annotated[str, Field(pattern=_NAME_RE.pattern)] = "appliance"
    version: str
    expires_days: Annotated[int, Field(gt=0, le=3650)] = 90

    @field_validator("version")
    @classmethod
    def _pep440(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion as exc:
            raise ValueError(f"not a PEP 440 version: {value!r}") from exc
        return value


class Target(_Model):
    """One Python interpreter and platform the wheelhouse serves."""

    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}$")]
    platform: str

    @field_validator("platform")
    @classmethod
    def _manylinux(cls, value: str) -> str:
        match = _PLATFORM_RE.match(value)
        if not match or (int(match[1]), int(match[2])) < (2, 17):
            raise ValueError(
                f"{value!r}: expected manylinux_2_N_ARCH with N >= 17 and ARCH x86_64 or aarch64"
            )
        return value

    @property
    def arch(self) -> str:
        return _PLATFORM_RE.match(self.platform)[3]  # type: ignore[index]

    @property
    def glibc(self) -> tuple[int, int]:
        match = _PLATFORM_RE.match(self.platform)
        return int(match[1]), int(match[2])  # type: ignore[index]

    @property
    def key(self) -> str:
        """A short, file-name safe identity: ``cp311-manylinux_2_28_x86_64``."""
        return f"cp{self.python.replace('.', '')}-{self.platform}"


class PythonSpec(_Model):
    requirements: list[str] = Field(default_factory=lambda: list(DEFAULT_REQUIREMENTS))
    index_url: str | None = None
    find_links: list[str] = Field(default_factory=list)
    no_index: bool = False

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one requirement is needed")
        for item in value:
            try:
                Requirement(item)
            except InvalidRequirement as exc:
                raise ValueError(f"{item!r}: {exc}") from exc
        return value


class Image(_Model):
    """A container image pinned by digest: ``ref@digest`` is what gets copied."""

    name: Annotated[str, Field(pattern=_NAME_RE.pattern)]
    ref: Annotated[str, Field(min_length=1)]
    digest: str | None = None
    role: Literal["vllm", "collector", "jaeger", "prometheus", "grafana", "harness-base", "other"] = "other"
    # For a multi-platform index: which image of it to copy (os/arch[/variant]).
    platform: Annotated[str, Field(pattern=r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")] = "linux/amd64"
    # Only for a registry on loopback in tests or a lab: TLS stays on by default.
    tls_verify: bool = True

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        if "@" in value:
            raise ValueError(f"{value!r}: give the digest in 'digest', not in the reference")
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not _DIGEST_RE.match(value):
            raise ValueError(f"{value!r}: expected sha256:<64 hex digits>")
        return value


class ModelDir(_Model):
    name: Annotated[str, Field(pattern=_NAME_RE.pattern)]
    path: Path


class Signing(_Model):
    """OpenPGP keys that sign the bundle (fingerprints of secret keys in ``homedir``)."""

    keys: list[str] = Field(default_factory=list)
    homedir: Path | None = None
    threshold: Annotated[int, Field(ge=1)] = 1

    @field_validator("keys")
    @classmethod
    def _fingerprints(cls, value: list[str]) -> list[str]:
        out = []
        for fpr in value:
            fpr = fpr.replace(" ", "").upper()
            if not _FPR_RE.match(fpr):
                raise ValueError(f"{fpr!r}: expected a full key fingerprint (40 or 64 hex digits)")
            out.append(fpr)
        if len(set(out)) != len(out):
            raise ValueError("a key is listed twice")
        return out

    @model_validator(mode="after")
    def _threshold(self) -> Signing:
        if self.keys and self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(self.keys)} signing keys")
        return self


class Audit(_Model):
    osv_url: str | None = None
    waive: bool = False
    waive_reason: str | None = None

    @model_validator(mode="after")
    def _reason(self) -> Audit:
        if self.waive and not (self.waive_reason or "").strip():
            raise ValueError("waive = true needs a waive_reason")
        return self


class Spec(_Model):
    bundle: BundleInfo
    python: PythonSpec = Field(default_factory=PythonSpec)
    targets: Annotated[list[Target], Field(min_length=1)]
    images: list[Image] = Field(default_factory=list)
    models: list[ModelDir] = Field(default_factory=list)
    signing: Signing = Field(default_factory=Signing)
    audit: Audit = Field(default_factory=Audit)
    # Directory the spec was read from: relative paths (models, homedir) resolve against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> Spec:
        for label, names in (
            ("targets", [t.key for t in self.targets]),
            ("images", [i.name for i in self.images]),
            ("models", [m.name for m in self.models]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{label}: duplicate entries {dupes}")
        return self

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def expires_at(self, created: dt.datetime) -> dt.datetime:
        return created + dt.timedelta(days=self.bundle.expires_days)


# The harness's own runtime dependencies: what a box needs to run the agent.
DEFAULT_REQUIREMENTS = (
    "httpx>=0.27",
    "opentelemetry-sdk>=1.27",
    "opentelemetry-exporter-otlp>=1.27",
    "pydantic>=2.7",
    "platformdirs>=4.2",
    "packaging>=24",
    "uv>=0.8",
)


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid spec"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_spec(text: str, *, source: str = "appliance.toml", base_dir: Path = Path(".")) -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from exc
    if "base_dir" in data:
        raise SpecError(f"{source}: invalid spec\n  base_dir: unknown key")
    try:
        return Spec.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from exc


def load_spec(path: Path) -> Spec:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror or exc}") from exc
    return parse_spec(text, source=str(path), base_dir=path.resolve().parent)


def default_spec_text() -> str:
    return resources.files("appliance").joinpath("default.toml").read_text(encoding="utf-8")


def default_spec() -> Spec:
    """The embedded default spec (``appliance/default.toml``)."""
    return parse_spec(default_spec_text(), source="<embedded default.toml>")
