"""The offline OSV server: range semantics, zip dumps, the endpoints pip-audit calls, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import httpx
import pytest

from appliance._internal.osv import OsvDatabase, OsvError

from .conftest import alpha_vuln, serving

RANGES = {
    "id": "OSV-R", "affected": [{
        "package": {"ecosystem": "PyPI", "name": "Some_Pkg"},
        "ranges": [
            {"type": "GIT", "events": [{"introduced": "0"}]},
            {"type": "ECOSYSTEM", "events": [{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"},
                                             {"last_affected": "2.2"}]},
        ],
    }],
}


@pytest.mark.parametrize(("version", "hit"), [
    ("0.9", False), ("1.0", True), ("1.4.9", True), ("1.5", False), ("1.9", False),
    ("2.0", True), ("2.2", True), ("2.2.1", False), ("not a version", False),
])
def test_ranges(version, hit):
    db = OsvDatabase([RANGES])
    assert [r["id"] for r in db.query("PyPI", "some-pkg", version)] == (["OSV-R"] if hit else [])
    assert db.query("npm", "some-pkg", "1.0") == []


def test_zip_dump_and_endpoints(tmp_path):
    dump = tmp_path / "all.zip"
    with zipfile.ZipFile(dump, "w") as zf:
        zf.writestr("PYSEC-TEST-1.json", json.dumps(alpha_vuln()))
    with serving(OsvDatabase.load(dump)) as url:
        hit = httpx.post(url, json={"package": {"name": "alpha", "ecosystem": "PyPI"}, "version": "1.0"})
        miss = httpx.post(url, json={"package": {"name": "alpha", "ecosystem": "PyPI"}, "version": "1.1"})
        bad = httpx.post(url, content=b"{")
        record = httpx.get(url.replace("/v1/query", "/v1/vulns/PYSEC-TEST-1"))
    assert [v["id"] for v in hit.json()["vulns"]] == ["PYSEC-TEST-1"]
    assert miss.json() == {} and bad.status_code == 400 and record.json()["id"] == "PYSEC-TEST-1"


def test_bad_dump_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("[1]")
    with pytest.raises(OsvError, match="not an OSV record"):
        OsvDatabase.load(tmp_path)
    with pytest.raises(OsvError, match="not a directory or zip"):
        OsvDatabase.load(tmp_path / "x.json")


def test_cli_serves_on_loopback(osv_dump):
    dump = osv_dump([alpha_vuln()])
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "audit", "serve", "--dump", str(dump), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 1 OSV records at http://127.0.0.1:")
        url = line.split(" at ")[1].strip()
        resp = httpx.post(url, json={"package": {"name": "alpha", "ecosystem": "PyPI"}, "version": "0.9"})
        assert resp.json()["vulns"][0]["id"] == "PYSEC-TEST-1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
