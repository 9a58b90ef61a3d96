"""An OSV-compatible vulnerability server over a local dump, for audits with no internet.

osv.dev publishes each ecosystem as one JSON record per vulnerability (e.g.
``PyPI/all.zip``). :class:`OsvDatabase` loads such a dump (a directory tree of
``*.json`` or a zip of them) and answers the queries pip-audit's OSV service
makes (``pip_audit/_service/osv.py``): ``POST /v1/query`` with
``{"package": {"name", "ecosystem"}, "version"}``, answered ``{"vulns": [...]}``
or ``{}``. ``GET /v1/vulns/<id>`` returns one record. A version is affected when
it is listed in ``affected[].versions`` or falls in an ``ECOSYSTEM`` range
(introduced <= v < fixed, or <= last_affected). Records with ``withdrawn`` are
still served; pip-audit itself skips them.

    appliance audit serve --dump PyPI-all.zip --port 8765
    appliance bundle build --osv-url http://127.0.0.1:8765/v1/query ...
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from appliance.errors import ApplianceError

QUERY_PATH = "/v1/query"
_VULN_PATH = re.compile(r"^/v1/vulns/([A-Za-z0-9._:-]+)$")
_MAX_BODY = 1 << 20


class OsvError(ApplianceError):
    """The OSV dump cannot be read."""


def _records(dump: Path) -> Iterator[tuple[str, bytes]]:
    if dump.is_dir():
        for path in sorted(dump.rglob("*.json")):
            yield str(path), path.read_bytes()
    elif zipfile.is_zipfile(dump):
        with zipfile.ZipFile(dump) as zf:
            for name in sorted(n for n in zf.namelist() if n.endswith(".json")):
                yield f"{dump}:{name}", zf.read(name)
    else:
        raise OsvError(f"{dump}: not a directory or zip of OSV JSON records")


def _affects(affected: dict[str, Any], version: Version, raw: str) -> bool:
    if raw in affected.get("versions", []):
        return True
    for rng in affected.get("ranges", []):
        if rng.get("type") != "ECOSYSTEM":
            continue
        inside = False
        for event in rng.get("events", []):  # events are ordered (OSV schema)
            kind, value = next(iter(event.items()))
            if kind == "introduced":
                inside = inside or value == "0" or Version(value) <= version
            elif kind == "fixed" and inside and version >= Version(value):
                inside = False
            elif kind == "last_affected" and inside and version > Version(value):
                inside = False
        if inside:
            return True
    return False


class OsvDatabase:
    """OSV records indexed by (ecosystem, normalized package name)."""

    def __init__(self, records: list[dict[str, Any]]):
        self.by_id = {r["id"]: r for r in records}
        self.by_package: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in records:
            for affected in record.get("affected", []):
                pkg = affected.get("package", {})
                key = (pkg.get("ecosystem", ""), canonicalize_name(pkg.get("name", "")))
                self.by_package.setdefault(key, []).append(record)

    @classmethod
    def load(cls, dump: Path) -> OsvDatabase:
        records = []
        for where, data in _records(dump):
            try:
                record = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise OsvError(f"{where}: not JSON: {exc}") from exc
            if not isinstance(record, dict) or "id" not in record:
                raise OsvError(f"{where}: not an OSV record (no id)")
            records.append(record)
        return cls(records)

    def query(self, ecosystem: str, name: str, version: str) -> list[dict[str, Any]]:
        try:
            parsed = Version(version)
        except InvalidVersion:
            return []
        name = canonicalize_name(name)
        out = []
        for record in self.by_package.get((ecosystem, name), []):
            hits = [
                a for a in record.get("affected", [])
                if canonicalize_name(a.get("package", {}).get("name", "")) == name
                and a.get("package", {}).get("ecosystem") == ecosystem
            ]
            if any(_affects(a, parsed, version) for a in hits) and record not in out:
                out.append(record)
        return out


class _Handler(BaseHTTPRequestHandler):
    server: OsvServer

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        if self.path != QUERY_PATH:
            return self._send(HTTPStatus.NOT_FOUND, {"message": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if length > _MAX_BODY:
                raise ValueError("body too large")
            query = json.loads(self.rfile.read(length))
            pkg, version = query["package"], query["version"]
            vulns = self.server.db.query(pkg.get("ecosystem", "PyPI"), pkg["name"], version)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._send(HTTPStatus.BAD_REQUEST, {"message": f"bad query: {exc}"})
        self._send(HTTPStatus.OK, {"vulns": vulns} if vulns else {})

    def do_GET(self) -> None:  # noqa: N802
        match = _VULN_PATH.match(self.path)
        record = self.server.db.by_id.get(match[1]) if match else None
        if record is None:
            return self._send(HTTPStatus.NOT_FOUND, {"message": "not found"})
        self._send(HTTPStatus.OK, record)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)


class OsvServer(ThreadingHTTPServer):
    """Serves an :class:`OsvDatabase`; ``url`` is what to give pip-audit's ``--osv-url``."""

    daemon_threads = True

    def __init__(self, db: OsvDatabase, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.db, self.verbose = db, verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{QUERY_PATH}"
