"""Container images: pinned by digest on the connected host, checked blob by blob on the box.

Build (connected host), per image of the spec:

1. ``skopeo inspect --raw`` fetches the manifest; its digest is computed here
   from the bytes (never taken from a registry header). A spec ``digest`` is a
   pin: other bytes are refused. A multi-platform index is resolved to the
   manifest of the image's ``platform``.
2. ``skopeo copy --preserve-digests docker://REF@DIGEST oci:images/oci:NAME``
   copies it into one OCI image layout (layers shared between images are
   stored once); the layout's entry must carry the locked digest.
3. ``lockfiles/images.lock`` records name, ref, digest, config and layers;
   ``sbom/images.cdx.json`` holds a CycloneDX ``container`` component per image.

Verify (the box, :func:`check_images`): every blob's sha256 equals its name,
every locked manifest, config and layer is present with its size, the layout
index, the lock, the manifest's image list and the SBOM agree, and no blob is
unaccounted for.

Install (:func:`load_image`): ``skopeo copy oci:... containers-storage:...``
(the same library as ``podman load``, with blob digests checked on read), then
the loaded image's digest is compared with the lock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appliance import __version__
from appliance.errors import BundleError, InstallError

LAYOUT = "images/oci"
LOCK = "lockfiles/images.lock"
SBOM = "sbom/images.cdx.json"
LOCK_SCHEMA = "appliance.images/1"
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BundleError(f"{name} not found: install it (apt-get install {name})")
    return path


def _run(argv: list[str], what: str, error: type[Exception] = BundleError, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, check=False, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() if isinstance(proc.stderr, bytes) else proc.stderr.strip()
        raise error(f"{what}: {err or f'exit {proc.returncode}'}")
    return proc


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _repo(ref: str) -> str:
    """``registry/path/name`` of a reference, without its tag."""
    last = ref.rsplit("/", 1)
    if ":" in last[-1]:
        return ref.rsplit(":", 1)[0]
    return ref


@dataclass(frozen=True)
class Resolved:
    digest: str  # the platform manifest that gets copied
    index_digest: str | None  # the multi-platform index it was chosen from, if any


def resolve(ref: str, *, pin: str | None, platform: str, tls_verify: bool) -> Resolved:
    """Digest of ``ref`` (or of ``ref@pin``, which must hash to ``pin``) for ``platform``."""
    skopeo = _tool("skopeo")
    tls = [f"--tls-verify={'true' if tls_verify else 'false'}"]
    source = f"docker://{_repo(ref)}@{pin}" if pin else f"docker://{ref}"
    raw = _run([skopeo, "inspect", *tls, "--raw", source], f"resolving {ref}").stdout
    digest = _sha256(raw)
    if pin and digest != pin:
        raise BundleError(f"{ref}: the registry served {digest} for the pinned {pin}: refused")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{ref}: the manifest is not JSON: {exc}") from exc
    if doc.get("mediaType") not in INDEX_TYPES and "manifests" not in doc:
        return Resolved(digest, None)
    os_, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    for entry in doc.get("manifests", []):
        p = entry.get("platform", {})
        if p.get("os") == os_ and p.get("architecture") == arch and (not variant or p.get("variant") == variant):
            child = entry["digest"]
            raw = _run([skopeo, "inspect", *tls, "--raw", f"docker://{_repo(ref)}@{child}"], f"resolving {ref}").stdout
            if _sha256(raw) != child:
                raise BundleError(f"{ref}: the registry served other bytes for {child}: refused")
            return Resolved(child, digest)
    raise BundleError(f"{ref}: no image for platform {platform} in its index {digest}")


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def vendor_images(spec: Any, root: Path) -> list[dict[str, Any]]:
    """Resolve, copy and record every image of ``spec`` into the bundle at ``root``; ImageEntry dicts."""
    if not spec.images:
        return []
    skopeo = _tool("skopeo")
    layout = root / LAYOUT
    layout.parent.mkdir(parents=True, exist_ok=True)
    locked = []
    for n, image in enumerate(spec.images, 1):
        print(f"images: [{n}/{len(spec.images)}] {image.name}: resolving {image.ref}", flush=True)
        res = resolve(image.ref, pin=image.digest, platform=image.platform, tls_verify=image.tls_verify)
        print(f"images: [{n}/{len(spec.images)}] {image.name}: copying {res.digest}", flush=True)
        _run([skopeo, "copy", "--quiet", "--preserve-digests", f"--src-tls-verify={str(image.tls_verify).lower()}",
              f"docker://{_repo(image.ref)}@{res.digest}", f"oci:{layout}:{image.name}"], f"copying {image.ref}")
        got = {m.get("annotations", {}).get(REF_NAME): m["digest"] for m in _load_json(layout / "index.json")["manifests"]}
        if got.get(image.name) != res.digest:
            raise BundleError(f"{image.name}: the copied image has digest {got.get(image.name)}, "
                              f"the lock says {res.digest}: refused")
        manifest = _load_json(_blob(layout, res.digest))
        locked.append({
            "name": image.name, "role": image.role, "ref": image.ref, "platform": image.platform,
            "digest": res.digest, "index_digest": res.index_digest, "pinned": image.digest,
            "config": {"digest": manifest["config"]["digest"], "size": manifest["config"]["size"]},
            "layers": [{"digest": lay["digest"], "size": lay["size"], "mediaType": lay.get("mediaType")}
                       for lay in manifest.get("layers", [])],
        })
    (root / LOCK).write_text(json.dumps({"schema": LOCK_SCHEMA, "images": locked}, indent=2) + "\n", encoding="utf-8")
    (root / SBOM).parent.mkdir(parents=True, exist_ok=True)
    (root / SBOM).write_text(images_sbom(spec.bundle.name, spec.bundle.version, locked), encoding="utf-8")
    return [{"name": e["name"], "ref": e["ref"], "digest": e["digest"], "role": e["role"], "path": LAYOUT}
            for e in locked]


def purl(entry: Mapping[str, Any]) -> str:
    repo = _repo(entry["ref"])
    name = repo.rsplit("/", 1)[-1]
    arch = entry["platform"].split("/")[1]
    return (f"pkg:oci/{quote(name)}@{quote(entry['digest'], safe='')}"
            f"?repository_url={quote(repo, safe='')}&arch={quote(arch)}")


def images_sbom(name: str, version: str, locked: list[dict[str, Any]]) -> str:
    """CycloneDX 1.6: one ``container`` component per image; its layers as nested ``data`` components."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    components = []
    for e in sorted(locked, key=lambda e: e["name"]):
        components.append({
            "type": "container",
            "bom-ref": f"image:{e['name']}",
            "name": e["name"],
            "version": e["digest"],
            "purl": purl(e),
            "hashes": [{"alg": "SHA-256", "content": e["digest"].split(":", 1)[1]}],
            "properties": [{"name": "appliance:ref", "value": e["ref"]},
                           {"name": "appliance:role", "value": e["role"]},
                           {"name": "appliance:config", "value": e["config"]["digest"]}],
            "components": [
                {"type": "data", "bom-ref": f"image:{e['name']}:layer:{i}", "name": lay["digest"],
                 "hashes": [{"alg": "SHA-256", "content": lay["digest"].split(":", 1)[1]}],
                 "properties": [{"name": "appliance:size", "value": str(lay["size"])}]}
                for i, lay in enumerate(e["layers"])
            ],
        })
    doc = {
        "bomFormat": "CycloneDX", "specVersion": "1.6", "serialNumber": uuid.uuid4().urn, "version": 1,
        "metadata": {
            "timestamp": now,
            "tools": {"components": [{"type": "application", "name": "appliance", "version": __version__}]},
            "component": {"type": "application", "bom-ref": f"bundle:{name}@{version}", "name": name, "version": version},
        },
        "components": components,
    }
    return json.dumps(doc, indent=2) + "\n"


def check_images(root: Path, images: list[Any], digests: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Content check for the verify stage: ``(bundle path, reason)`` for every disagreement.

    ``images`` are the manifest's ImageEntry records; ``digests`` maps bundle
    paths to the sizes and sha256 the verify stage has just computed.
    """
    problems: list[tuple[str, str]] = []
    blob_prefix = f"{LAYOUT}/blobs/"
    blobs = {rel for rel in digests if rel.startswith(blob_prefix)}
    if not images:
        for rel in sorted(blobs | {r for r in digests if r in (LOCK, SBOM)}):
            problems.append((rel, "image data in a bundle whose manifest lists no images"))
        return problems
    for rel in sorted(blobs):
        algo, _, hexd = rel[len(blob_prefix):].partition("/")
        d = digests[rel]
        if algo != "sha256" or d.sha256 != hexd:
            problems.append((rel, f"blob content has sha256 {d.sha256}, not the digest it is named by"))
    try:
        lock = json.loads((root / LOCK).read_text(encoding="utf-8"))
        if lock.get("schema") != LOCK_SCHEMA:
            raise ValueError(f"schema {lock.get('schema')!r}, expected {LOCK_SCHEMA}")
        locked = {e["name"]: e for e in lock["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return problems + [(LOCK, f"unreadable images lock: {exc}")]
    listed = {i.name: i for i in images}
    if set(listed) != set(locked):
        problems.append((LOCK, f"images differ from the manifest's: only in lock {sorted(set(locked) - set(listed))}, "
                               f"only in manifest {sorted(set(listed) - set(locked))}"))
    try:
        index = json.loads((root / LAYOUT / "index.json").read_text(encoding="utf-8"))
        in_index = {m.get("annotations", {}).get(REF_NAME): m["digest"] for m in index["manifests"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return problems + [(f"{LAYOUT}/index.json", f"unreadable OCI index: {exc}")]
    used: set[str] = set()
    for name, e in sorted(locked.items()):
        if name in listed and listed[name].digest != e["digest"]:
            problems.append((LOCK, f"{name}: lock digest {e['digest']} != manifest digest {listed[name].digest}"))
        if in_index.get(name) != e["digest"]:
            problems.append((f"{LAYOUT}/index.json", f"{name}: layout has {in_index.get(name)}, lock has {e['digest']}"))
        rel = f"{blob_prefix}{e['digest'].replace(':', '/')}"
        used.add(rel)
        if rel not in digests:
            problems.append((rel, f"{name}: manifest blob missing"))
            continue
        try:
            manifest = json.loads((root / rel).read_bytes())
            parts = [manifest["config"], *manifest.get("layers", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append((rel, f"{name}: unreadable image manifest: {exc}"))
            continue
        want = [e["config"], *e["layers"]]
        if [(p["digest"], p["size"]) for p in parts] != [(w["digest"], w["size"]) for w in want]:
            problems.append((rel, f"{name}: config/layers differ from {LOCK}"))
        for p in parts:
            prel = f"{blob_prefix}{p['digest'].replace(':', '/')}"
            used.add(prel)
            if prel not in digests:
                problems.append((prel, f"{name}: blob missing"))
            elif digests[prel].size != p["size"]:
                problems.append((prel, f"{name}: blob is {digests[prel].size} bytes, its manifest says {p['size']}"))
    for rel in sorted(blobs - used):
        problems.append((rel, "blob not referenced by any locked image"))
    problems += _check_images_sbom(root, locked)
    return problems


def _check_images_sbom(root: Path, locked: Mapping[str, Any]) -> list[tuple[str, str]]:
    try:
        doc = json.loads((root / SBOM).read_text(encoding="utf-8"))
        got = {c["name"]: (c["version"], [lay["name"] for lay in c.get("components", [])])
               for c in doc["components"] if c.get("type") == "container"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [(SBOM, f"unreadable images SBOM: {exc}")]
    want = {n: (e["digest"], [lay["digest"] for lay in e["layers"]]) for n, e in locked.items()}
    if got != want:
        diff = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
        return [(SBOM, f"image components differ from {LOCK}: {diff}")]
    return []


def read_lock(root: Path) -> dict[str, dict[str, Any]]:
    try:
        return {e["name"]: e for e in json.loads((root / LOCK).read_text(encoding="utf-8"))["images"]}
    except FileNotFoundError:
        return {}


def local_name(name: str, digest: str) -> str:
    """The tag an image gets in local storage: stable per digest, so re-installs are no-ops."""
    return f"localhost/appliance/{name}:{digest.split(':', 1)[1][:16]}"


def image_digests(ref: str, env: Mapping[str, str] | None = None) -> set[str]:
    """Every manifest digest local storage holds for the image ``ref`` names (empty if none).

    An image (one config) can be stored under several manifests, e.g. the same
    build pushed twice with different compression; storage records each
    manifest it stored, by the digest of its bytes.
    """
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Digest}} {{json .RepoDigests}}", ref],
                          capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        return set()
    first, _, rest = proc.stdout.strip().partition(" ")
    return {first} | {r.rsplit("@", 1)[1] for r in json.loads(rest or "[]") if "@" in r}


def load_image(root: Path, entry: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    """Copy one verified image from the bundle's layout into podman's storage; its digest must match the lock."""
    target = local_name(entry["name"], entry["digest"])
    if entry["digest"] in image_digests(target, env):
        return target
    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise InstallError("skopeo not found: install it (apt-get install skopeo)")
    _run([skopeo, "copy", "--quiet", "--preserve-digests", f"oci:{root / LAYOUT}:{entry['name']}",
          f"containers-storage:{target}"], f"loading image {entry['name']}", InstallError,
         env=dict(env) if env is not None else None)
    got = image_digests(target, env)
    if entry["digest"] not in got:
        subprocess.run(["podman", "rmi", "-f", target], capture_output=True, check=False, env=env)
        raise InstallError(f"image {entry['name']}: loaded digests {sorted(got)} differ from the lock's {entry['digest']}: removed")
    return target


def podman_env(containers_conf: Path | None = None) -> dict[str, str]:
    """The environment podman/skopeo run with: the box's containers.conf unless the operator set one."""
    env = dict(os.environ)
    if containers_conf and "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = str(containers_conf)
    return env
