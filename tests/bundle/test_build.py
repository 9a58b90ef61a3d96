"""A bundle for cp311+cp312 x x86_64+aarch64 from a local find-links dir: content and offline install."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from appliance.bundle import build_bundle
from appliance._internal.gpg import verify_detached
from appliance._internal.hashing import hash_file
from appliance._internal.manifest import SUMS, parse_sums

PYTHONS = {"3.11": sys.executable if sys.version_info[:2] == (3, 11) else None}


def wheelhouse(bundle: Path) -> dict[str, str]:
    return {p.name: hash_file(p).sha256 for p in (bundle / "wheelhouse").iterdir()}


def test_layout_manifest_and_signature(built, gpg_keys, tmp_path):
    bundle, manifest = built
    assert not bundle.with_name("bundle.partial").exists()
    assert sorted(p.name for p in bundle.iterdir()) == [
        "SHA256SUMS", "audit", "images", "lockfiles", "manifest.json", "sbom", "signatures", "tools", "wheelhouse"]
    assert sorted(p.name for p in (bundle / "lockfiles").iterdir()) == [
        "pylock.toml", "pyproject.toml", "requirements.txt", "tools.json", "uv.lock"]
    assert manifest.audit.status == "clean" and manifest.audit.report == "audit/pip-audit.json"
    assert manifest.audit.service.startswith("osv http://127.0.0.1:")
    assert "uv" in manifest.requirements  # added: the box needs a uv of its own
    assert manifest.images == [] and manifest.signing.keys == [gpg_keys.keys[0].fingerprint]
    sums, problems = parse_sums((bundle / SUMS).read_text())
    assert not problems and set(sums) == {f.path for f in manifest.files} | {"manifest.json"}
    keyring = gpg_keys.keyring(0, path=tmp_path / "ring.gpg")
    sigs = verify_detached(bundle / "signatures" / f"{gpg_keys.keys[0].fingerprint}.asc", bundle / SUMS, keyring)
    assert [s.valid for s in sigs] == [True]


def test_resolution_project(built):
    bundle, _ = built
    project = tomllib.loads((bundle / "lockfiles" / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11, <3.13"
    assert "uv" in project["project"]["dependencies"]
    envs = project["tool"]["uv"]["environments"]
    assert envs == project["tool"]["uv"]["required-environments"] and len(envs) == 4
    assert "sys_platform == 'linux' and platform_machine == 'aarch64' and python_version == '3.12'" in envs


def test_wheelhouse_per_target(built):
    bundle, _ = built
    files = set(wheelhouse(bundle))
    assert {"alpha-1.0-py3-none-any.whl", "beta-1.2-py3-none-any.whl", "gamma-0.3-py3-none-any.whl"} <= files
    for py in ("cp311", "cp312"):
        for arch in ("x86_64", "aarch64"):
            assert f"fastlib-2.0-{py}-{py}-manylinux_2_17_{arch}.whl" in files
        assert f"x86only-1.0-{py}-{py}-manylinux_2_17_x86_64.whl" in files
    assert not any("x86only" in f and "aarch64" in f for f in files)  # excluded by its marker
    assert not any(f.startswith("newglibc") for f in files)  # not required
    tools = json.loads((bundle / "lockfiles" / "tools.json").read_text())
    assert sorted(tools["uv"]) == sorted(f"cp{p}-manylinux_2_28_{a}" for p in ("311", "312") for a in ("x86_64", "aarch64"))
    for key, entry in tools["uv"].items():
        assert entry["wheel"].split("/")[1] in files and key.rsplit("_", 1)[-1] in entry["wheel"]


def test_pylock_is_local_and_matches_wheelhouse(built):
    bundle, _ = built
    lock = tomllib.loads((bundle / "lockfiles" / "pylock.toml").read_text())
    actual = wheelhouse(bundle)
    locked = {}
    for pkg in lock["packages"]:
        assert set(pkg) <= {"name", "version", "marker", "wheels"}, pkg  # no sdist, no index
        for wheel in pkg["wheels"]:
            assert set(wheel) == {"name", "path", "size", "hashes"}, wheel  # no url
            assert wheel["path"] == f"../wheelhouse/{wheel['name']}"
            assert wheel["size"] == (bundle / "wheelhouse" / wheel["name"]).stat().st_size
            locked[wheel["name"]] = wheel["hashes"]["sha256"]
    assert locked == actual
    reqs = (bundle / "lockfiles" / "requirements.txt").read_text()
    assert all(f"--hash=sha256:{h}" in reqs for h in actual.values())


def test_sbom_is_valid_cyclonedx_and_matches(built):
    bundle, manifest = built
    text = (bundle / "sbom" / "python.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    assert sbom["specVersion"] == "1.6" and sbom["metadata"]["component"]["name"] == "test"
    actual = wheelhouse(bundle)
    comps = {c["bom-ref"]: c for c in sbom["components"]}
    assert set(comps) == {f"wheelhouse/{f}" for f in actual}
    for ref, c in comps.items():
        file = ref.split("/")[1]
        assert c["type"] == "library" and c["hashes"] == [{"alg": "SHA-256", "content": actual[file]}]
        assert c["purl"] == f"pkg:pypi/{c['name']}@{c['version']}?file_name={file}"
        props = {p["name"]: p["value"] for p in c["properties"]}
        assert props["appliance:path"] == ref and props["appliance:target"]
    gamma = {p["name"]: p["value"] for p in comps["wheelhouse/gamma-0.3-py3-none-any.whl"]["properties"]}
    assert gamma["appliance:target"] == ",".join(f"cp{t.python.replace('.', '')}-{t.platform}" for t in manifest.targets)


def _offline(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh network namespace with only loopback."""
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up; {script}"],
        capture_output=True, text=True, env={**os.environ, **env}, check=False, timeout=120,
    )


def test_offline_install_and_vendored_uv(built, tmp_path):
    bundle, _ = built
    uv_wheel = json.loads((bundle / "lockfiles" / "tools.json").read_text())["uv"]["cp311-manylinux_2_28_x86_64"]["wheel"]
    with zipfile.ZipFile(bundle / uv_wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/scripts/uv"))
        uv = tmp_path / "uv"
        uv.write_bytes(zf.read(name))
    uv.chmod(0o755)
    venv = tmp_path / "venv"
    env = {"UV_CACHE_DIR": str(tmp_path / "cache"), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
    assert PYTHONS["3.11"], "the test suite runs on CPython 3.11 (the x86_64 cp311 target)"
    proc = _offline(
        f"{uv} --version && {uv} venv -q --python {PYTHONS['3.11']} {venv} && "
        f"{uv} pip install --python {venv}/bin/python --offline --no-index --no-build --require-hashes "
        f"-r {bundle}/lockfiles/pylock.toml && "
        f"{venv}/bin/python -c 'import alpha, beta, gamma, fastlib, x86only; print(alpha.__version__)' && "
        f"{venv}/bin/uv --version",
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("uv 0.") and "1.0" in out and out[-1] == out[0]


def test_http_find_links_are_downloaded_and_checked(make_spec, find_links, clean_osv_url, tmp_path):
    """Wheels from an HTTP index (loopback) are streamed, checked, and localized like local ones."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(find_links))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = make_spec(requirements=("alpha",), targets=[("3.11", "x86_64")])
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        spec = spec.model_copy(update={"python": spec.python.model_copy(update={"find_links": [url]})})
        manifest = build_bundle(spec, tmp_path / "out", osv_url=clean_osv_url, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert url in (tmp_path / "out" / "lockfiles" / "uv.lock").read_text()
    lock = tomllib.loads((tmp_path / "out" / "lockfiles" / "pylock.toml").read_text())
    assert {w["path"] for p in lock["packages"] for w in p["wheels"]} == {
        f"../wheelhouse/{f}" for f in wheelhouse(tmp_path / "out")}
    assert manifest.audit.status == "clean"
