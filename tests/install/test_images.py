"""Images by digest: loopback registry -> bundle (OCI layout) -> verify -> podman storage -> harness image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from appliance.bundle import build_bundle
from appliance.errors import BundleError, InstallError, VerifyError
from appliance.install import InstallOptions, install_bundle, status
from appliance.spec import parse_spec
from appliance.verify import verify_bundle
from appliance._internal import images, stack

from .conftest import REPO, images_toml, podman_env, sh, spec_text
from .test_install import reseal

pytestmark = pytest.mark.podman


def digest_of(registry_ref: str) -> str:
    return sh("skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{registry_ref}").stdout.strip()


def test_bundle_pins_copies_and_describes_every_image(image_bundle, pushed, keyring):
    lock = {e["name"]: e for e in json.loads((image_bundle / images.LOCK).read_text())["images"]}
    assert sorted(lock) == sorted(["vllm", "collector", "jaeger", "prometheus", "grafana", "python-base"])
    for role, ref in pushed.items():
        name = role if role != "harness-base" else "python-base"
        assert lock[name]["digest"] == digest_of(ref) and lock[name]["ref"] == ref
    index = json.loads((image_bundle / images.LAYOUT / "index.json").read_text())
    assert {m["annotations"][images.REF_NAME]: m["digest"] for m in index["manifests"]} == {
        n: e["digest"] for n, e in lock.items()}
    sbom = (image_bundle / images.SBOM).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom) is None
    comps = {c["name"]: c for c in json.loads(sbom)["components"]}
    assert comps["vllm"]["type"] == "container" and comps["vllm"]["purl"].startswith("pkg:oci/vllm@sha256%3A")
    assert [c["name"] for c in comps["vllm"]["components"]] == [lay["digest"] for lay in lock["vllm"]["layers"]]
    manifest = json.loads((image_bundle / "manifest.json").read_text())
    assert {i["name"]: i["digest"] for i in manifest["images"]} == {n: e["digest"] for n, e in lock.items()}
    report = verify_bundle(image_bundle, keyring, progress=False)
    assert report.ok, report.problems
    # the bootstrap verifier (gpgv + sha256sum only) covers the image blobs too
    proc = subprocess.run(["bash", str(REPO / "installer" / "verify.sh"), str(image_bundle), str(keyring)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_pin_the_registry_does_not_serve_is_refused(tmp_path, find_links, gpg_keys, clean_osv_url, pushed):
    wrong = "sha256:" + "0" * 64
    text = spec_text(find_links, gpg_keys, targets=[("3.11", "x86_64")],
                     extra=f'[audit]\nosv_url = "{clean_osv_url}"\n\n' + images_toml({"vllm": pushed["vllm"]}, {"vllm": wrong}))
    with pytest.raises(BundleError, match="vllm"):
        build_bundle(parse_spec(text, base_dir=tmp_path), tmp_path / "out", progress=False)
    right = digest_of(pushed["vllm"])
    text = text.replace(wrong, right)
    build_bundle(parse_spec(text, base_dir=tmp_path), tmp_path / "out2", progress=False)
    assert json.loads((tmp_path / "out2" / images.LOCK).read_text())["images"][0]["pinned"] == right


@pytest.fixture
def copy(image_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(image_bundle, out)
    return out


def test_a_corrupted_blob_is_refused_by_verify_and_install(copy, keyring, tmp_path):
    lock = json.loads((copy / images.LOCK).read_text())["images"]
    layer = next(e for e in lock if e["name"] == "grafana")["layers"][0]["digest"]
    blob = copy / images.LAYOUT / "blobs" / "sha256" / layer.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    rel = f"{images.LAYOUT}/blobs/sha256/{layer.split(':')[1]}"
    proc = subprocess.run(["bash", str(REPO / "installer" / "verify.sh"), str(copy), str(keyring)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and rel in proc.stdout + proc.stderr
    report = verify_bundle(copy, keyring, progress=False)
    reasons = " | ".join(p.reason for p in report.problems if p.path == rel)
    assert report.exit_code == 10 and "sha256 mismatch" in reasons and "not the digest it is named by" in reasons
    with pytest.raises(VerifyError):
        install_bundle(copy, keyring, InstallOptions(prefix=tmp_path / "box", progress=False))
    assert not (tmp_path / "box" / "current").exists()


def test_a_lock_digest_that_differs_from_the_layout_is_refused(copy, keyring, gpg_keys):
    """Even a signed bundle whose lock disagrees with its images is refused (a buggy or malicious signer)."""
    path = copy / images.LOCK
    lock = json.loads(path.read_text())
    lock["images"][0]["digest"] = "sha256:" + "1" * 64
    path.write_text(json.dumps(lock))
    reseal(copy, gpg_keys)
    report = verify_bundle(copy, keyring, progress=False)
    assert not report.ok and report.exit_code == 10
    assert any(p.path == images.LOCK and "lock digest" in p.reason for p in report.problems)


def test_load_checks_the_digest_after_loading(image_bundle):
    entry = dict(images.read_lock(image_bundle)["jaeger"])
    env = podman_env()
    ok = images.load_image(image_bundle, entry, env)
    assert entry["digest"] in images.image_digests(ok, env)
    entry["digest"] = "sha256:" + "2" * 64
    with pytest.raises(InstallError, match="differ from the lock"):
        images.load_image(image_bundle, entry, env)
    assert images.image_digests(images.local_name("jaeger", entry["digest"]), env) == set()


def free_ports() -> dict[str, int]:
    import socket

    out = {}
    for name in stack.DEFAULT_PORTS:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            out[name] = s.getsockname()[1]
    return out


def test_install_loads_images_builds_the_harness_and_starts_the_stack(image_bundle, keyring, tmp_path, monkeypatch):
    monkeypatch.delenv("CONTAINERS_CONF", raising=False)  # the packaged containers.conf must be enough
    prefix = tmp_path / "box"
    options = InstallOptions(prefix=prefix, progress=False, start=True, stack_ports=free_ports())
    try:
        receipt = install_bundle(image_bundle, keyring, options)
        st = status(prefix)
    finally:
        if (prefix / "current" / "stack" / "stack.yaml").exists():
            stack.stop_stack(prefix / "current" / "stack" / "stack.yaml")
    assert receipt["started_stack"] is True
    assert st["stack"] == {p: "running" for p in ("vllm", "collector", "jaeger", "prometheus", "grafana")}, st["stack"]
    assert stack.stack_status() == {}
    # the operator's commands: up again, down
    cli = [sys.executable, "-m", "appliance", "stack"]
    try:
        up = subprocess.run([*cli, "up", "--prefix", str(prefix)], capture_output=True, text=True)
        assert up.returncode == 0, up.stderr
        assert set(stack.stack_status().values()) == {"running"}
    finally:
        down = subprocess.run([*cli, "down", "--prefix", str(prefix)], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert stack.stack_status() == {}
    env = podman_env()
    lock = images.read_lock(image_bundle)
    for name, ref in receipt["images"]["loaded"].items():
        assert lock[name]["digest"] in images.image_digests(ref, env)
    harness = receipt["images"]["harness"]
    out = sh("podman", "run", "--rm", "--network", "none", harness, "--version")
    import appliance

    assert out.stdout.strip() == f"appliance {appliance.__version__}"
    out = sh("podman", "run", "--rm", "--network", "none", "--entrypoint", "/opt/appliance/venv/bin/python",
             harness, "-c", "import alpha, x86only; print(alpha.__version__)")
    assert out.stdout.strip() == "1.0"
    stack_file = prefix / "current" / "stack" / "stack.yaml"
    assert stack_file.is_file() and str(prefix / "releases") in stack_file.read_text()
    pod = json.loads(stack_yaml := stack_file.read_text())
    assert {c["name"] for c in pod["spec"]["containers"]} == {"vllm", "collector", "jaeger", "prometheus", "grafana"}
    assert all(p["hostIP"] == "127.0.0.1" for c in pod["spec"]["containers"] for p in c.get("ports", []))
    model = next(v for v in pod["spec"]["volumes"] if v["name"] == "model")["hostPath"]["path"]
    assert model.startswith(str(prefix / "releases")) and (prefix / "current" / "bundle" / "models" / "tiny" / "config.json").is_file()
    assert str(tmp_path) in stack_yaml
    # a second install of the same bundle changes nothing
    assert install_bundle(image_bundle, keyring, InstallOptions(prefix=prefix, progress=False))["result"] == "unchanged"
