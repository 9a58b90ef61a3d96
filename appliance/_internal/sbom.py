"""The bundle's Python SBOM: CycloneDX 1.6 JSON, one component per wheel file.

Written by hand (no extra dependency) and validated by the tests against the
official schema. The fields the verify stage matches on are a contract
(docs/bundle-format.md): ``bom-ref`` and the ``appliance:path`` property are the
bundle path ``wheelhouse/<file>``, the SHA-256 hash is the file's, and
``appliance:target`` lists the target keys the wheel serves.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from appliance import __version__


@dataclass(frozen=True)
class WheelComponent:
    path: str  # bundle path, wheelhouse/<file>
    name: str  # normalized project name
    version: str
    sha256: str
    targets: tuple[str, ...]


def purl(c: WheelComponent) -> str:
    file = c.path.rsplit("/", 1)[-1]
    return f"pkg:pypi/{quote(c.name)}@{quote(c.version)}?file_name={quote(file)}"


def python_sbom(name: str, version: str, created: dt.datetime, components: Iterable[WheelComponent]) -> str:
    """The CycloneDX 1.6 JSON document, sorted by path so equal bundles give equal text."""
    comps = sorted(components, key=lambda c: c.path)
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": uuid.uuid4().urn,
        "version": 1,
        "metadata": {
            "timestamp": created.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "appliance", "version": __version__}]},
            "component": {"type": "application", "bom-ref": f"bundle:{name}@{version}", "name": name, "version": version},
        },
        "components": [
            {
                "type": "library",
                "bom-ref": c.path,
                "name": c.name,
                "version": c.version,
                "purl": purl(c),
                "hashes": [{"alg": "SHA-256", "content": c.sha256}],
                "properties": [
                    {"name": "appliance:path", "value": c.path},
                    {"name": "appliance:target", "value": ",".join(c.targets)},
                ],
            }
            for c in comps
        ],
    }
    return json.dumps(doc, indent=2) + "\n"
