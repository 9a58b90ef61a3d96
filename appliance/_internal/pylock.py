"""Read uv's PEP 751 export, choose each target's wheels, and write the localized lock.

uv exports ``pylock.toml`` with wheel URLs. A bundle's lock must install with no
network, so :func:`localize` rewrites it: only packages whose ``marker`` holds
for some target, only the wheels some target needs, each as
``{name, path = "../wheelhouse/<file>", size, hashes}``; no url, sdist or index.
``requirements.txt`` (for pip-audit) is derived from the same selection, so the
audit sees exactly what was vendored, hash for hash.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from packaging.markers import InvalidMarker, Marker
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from appliance.errors import BundleError
from appliance.spec import Target
from appliance._internal.targets import marker_env, wheel_tags

WHEELHOUSE = "wheelhouse"


@dataclass(frozen=True)
class Wheel:
    """One wheel file of a locked package, where it comes from and what it must hash to."""

    file: str
    source: str  # URL (http, https, file) or local path, as the lock gives it
    sha256: str
    size: int | None
    tags: frozenset[Tag]


@dataclass(frozen=True)
class Package:
    name: str  # normalized
    version: str
    marker: Marker | None
    wheels: tuple[Wheel, ...]


@dataclass
class Selected:
    """A wheel chosen for the bundle and the targets (keys) that need it."""

    package: Package
    wheel: Wheel
    targets: list[str] = field(default_factory=list)


def _wheel(pkg: str, entry: dict) -> Wheel:
    source = entry.get("url") or entry.get("path")
    file = entry.get("name") or unquote(urlsplit(source or "").path.rsplit("/", 1)[-1])
    sha256 = (entry.get("hashes") or {}).get("sha256")
    if not source or not sha256:
        raise BundleError(f"pylock: package {pkg}: wheel {file or '?'} has no url/path or no sha256 hash")
    try:
        _, _, _, wheel_tags_ = parse_wheel_filename(file)
    except InvalidWheelFilename as exc:
        raise BundleError(f"pylock: package {pkg}: {exc}") from exc
    return Wheel(file, source, sha256.lower(), entry.get("size"), frozenset(wheel_tags_))


def parse(text: str) -> tuple[dict, list[Package]]:
    """Split a pylock into its top-level keys and its packages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"pylock: not valid TOML: {exc}") from exc
    packages = []
    for raw in data.pop("packages", []):
        name = canonicalize_name(raw["name"])
        try:
            marker = Marker(raw["marker"]) if raw.get("marker") else None
        except InvalidMarker as exc:
            raise BundleError(f"pylock: package {name}: {exc}") from exc
        wheels = tuple(_wheel(name, w) for w in raw.get("wheels", []))
        packages.append(Package(name, str(raw.get("version", "")), marker, wheels))
    return data, packages


def select(packages: Iterable[Package], targets: Iterable[Target]) -> dict[str, Selected]:
    """Each target's best wheel of each package it needs, by file name.

    A package needed by a target without a compatible wheel is an error: the box
    cannot build an sdist (no compiler, no network).
    """
    chosen: dict[str, Selected] = {}
    for target in targets:
        env = marker_env(target)
        rank = {tag: i for i, tag in reversed(list(enumerate(wheel_tags(target))))}
        for pkg in packages:
            if pkg.marker is not None and not pkg.marker.evaluate(env):
                continue
            fits = [(min(rank[t] for t in w.tags if t in rank), w) for w in pkg.wheels if w.tags & rank.keys()]
            if not fits:
                raise BundleError(
                    f"no compatible wheel of {pkg.name} {pkg.version} for target {target.key} "
                    f"(locked wheels: {', '.join(w.file for w in pkg.wheels) or 'none, sdist only'})"
                )
            wheel = min(fits, key=lambda f: f[0])[1]
            chosen.setdefault(wheel.file, Selected(pkg, wheel)).targets.append(target.key)
    return chosen


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def localize(top: dict, selection: dict[str, Selected], sizes: dict[str, int]) -> str:
    """The bundle's pylock.toml: the selected wheels as ``../wheelhouse`` paths, nothing else."""
    by_pkg: dict[str, list[Selected]] = {}
    for sel in sorted(selection.values(), key=lambda s: (s.package.name, s.wheel.file)):
        by_pkg.setdefault(sel.package.name, []).append(sel)
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items() if not isinstance(v, dict | list) or k == "environments"]
    for sels in by_pkg.values():
        pkg = sels[0].package
        lines += ["", "[[packages]]", f"name = {_toml_value(pkg.name)}", f"version = {_toml_value(pkg.version)}"]
        if pkg.marker is not None:
            lines.append(f"marker = {_toml_value(str(pkg.marker))}")
        lines.append("wheels = [")
        for s in sels:
            entry = {"name": s.wheel.file, "path": f"../{WHEELHOUSE}/{s.wheel.file}",
                     "size": sizes[s.wheel.file], "hashes": {"sha256": s.wheel.sha256}}
            lines.append(f"    {_toml_value(entry)},")
        lines.append("]")
    return "\n".join(lines) + "\n"


def requirements_txt(selection: dict[str, Selected]) -> str:
    """Pinned, hashed requirements of the selected wheels (one entry per package)."""
    hashes: dict[tuple[str, str], list[str]] = {}
    for sel in selection.values():
        hashes.setdefault((sel.package.name, sel.package.version), []).append(sel.wheel.sha256)
    return "".join(
        f"{name}=={version}" + "".join(f" \\\n    --hash=sha256:{h}" for h in sorted(hs)) + "\n"
        for (name, version), hs in sorted(hashes.items())
    )
