"""appliance install / rollback / status on a verified bundle: venv, receipts, atomic switch, faults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from appliance.errors import InstallError, VerifyError
from appliance.install import InstallOptions, install_bundle, rollback, status
from appliance._internal.manifest import Manifest
from appliance._internal.seal import seal

REPO = Path(__file__).resolve().parents[2]


def reseal(root: Path, gpg_keys, **changes) -> Manifest:
    old = Manifest.model_validate_json((root / "manifest.json").read_text())
    meta = old.model_dump(by_alias=True, exclude={"files"}) | changes
    return seal(root, meta, keys=[gpg_keys.keys[0].fingerprint], homedir=gpg_keys.homedir)


@pytest.fixture
def v1(built, tmp_path) -> Path:
    out = tmp_path / "v1"
    shutil.copytree(built[0], out)
    return out


@pytest.fixture
def v2(built, tmp_path, gpg_keys) -> Path:
    out = tmp_path / "v2"
    shutil.copytree(built[0], out)
    reseal(out, gpg_keys, version="1.1.0")
    return out


def opts(prefix: Path, **kw) -> InstallOptions:
    return InstallOptions(prefix=prefix, progress=False, **kw)


def current(prefix: Path) -> str:
    return os.readlink(prefix / "current")


def venv_python(prefix: Path) -> Path:
    return prefix / "current" / "venv" / "bin" / "python"


def test_install_makes_a_working_offline_venv(v1, keyring, tmp_path):
    prefix = tmp_path / "box"
    receipt = install_bundle(v1, keyring, opts(prefix))
    assert receipt["result"] == "installed" and receipt["version"] == "1.0.0"
    assert current(prefix) == f"releases/{receipt['release']}"
    assert receipt["venv"]["tool"].startswith("uv 0.") and receipt["venv"]["target"] == "cp311-manylinux_2_28_x86_64"
    out = subprocess.run([venv_python(prefix), "-c", "import alpha, fastlib, x86only, appliance; "
                          "print(alpha.__version__, appliance.__version__)"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import appliance

    assert out.stdout.split() == ["1.0", appliance.__version__]
    # console scripts name the release's final path
    cli = subprocess.run([prefix / "current" / "venv" / "bin" / "appliance", "--version"], capture_output=True, text=True)
    assert cli.stdout.strip() == f"appliance {appliance.__version__}", cli.stderr
    assert receipt["venv"]["path"] == str(prefix / "releases" / receipt["release"] / "venv")
    # the release holds verified copies of the metadata; the vendored uv is not left loose
    rel = prefix / "current"
    assert (rel / "bundle" / "lockfiles" / "pylock.toml").read_bytes() == (v1 / "lockfiles" / "pylock.toml").read_bytes()
    assert not (rel / "bundle" / "wheelhouse").exists()
    saved = json.loads((rel / "receipt.json").read_text())
    assert saved["manifest_sha256"] == receipt["manifest_sha256"] and saved["result"] == "installed"
    st = status(prefix, stack=False)
    assert st["current"]["release"] == receipt["release"] and st["previous"] is None and st["attempts"] == 1


def test_reinstall_is_a_no_op(v1, keyring, tmp_path):
    prefix = tmp_path / "box"
    first = install_bundle(v1, keyring, opts(prefix))
    mtime = (prefix / "current" / "receipt.json").stat().st_mtime_ns
    again = install_bundle(v1, keyring, opts(prefix))
    assert again["result"] == "unchanged" and again["release"] == first["release"]
    assert (prefix / "current" / "receipt.json").stat().st_mtime_ns == mtime
    assert len(list((prefix / "receipts").glob("*.json"))) == 2
    assert not (prefix / "previous").exists()


def test_upgrade_then_rollback_and_back(v1, v2, keyring, tmp_path):
    prefix = tmp_path / "box"
    r1 = install_bundle(v1, keyring, opts(prefix))
    r2 = install_bundle(v2, keyring, opts(prefix))
    assert r2["version"] == "1.1.0" and current(prefix).endswith(r2["release"])
    assert os.readlink(prefix / "previous").endswith(r1["release"])
    assert rollback(prefix) == r1["release"]
    assert current(prefix).endswith(r1["release"]) and os.readlink(prefix / "previous").endswith(r2["release"])
    assert subprocess.run([venv_python(prefix), "-c", "import alpha"]).returncode == 0
    assert rollback(prefix) == r2["release"]
    # an older bundle than the installed one is refused (rollback goes through `appliance rollback` only)
    with pytest.raises(VerifyError) as exc:
        install_bundle(v1, keyring, opts(prefix))
    assert exc.value.exit_code == 12 and "older" in str(exc.value.problems).lower()


def test_rollback_with_nothing_before(v1, keyring, tmp_path):
    with pytest.raises(InstallError, match="nothing to roll back"):
        rollback(tmp_path / "empty")
    install_bundle(v1, keyring, opts(tmp_path / "box"))
    with pytest.raises(InstallError, match="nothing to roll back"):
        rollback(tmp_path / "box")


def test_a_bundle_that_does_not_verify_is_refused(v1, v2, keyring, tmp_path):
    prefix = tmp_path / "box"
    r1 = install_bundle(v1, keyring, opts(prefix))
    wheel = next((v2 / "wheelhouse").glob("alpha-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 1
    wheel.write_bytes(bytes(data))
    with pytest.raises(VerifyError) as exc:
        install_bundle(v2, keyring, opts(prefix))
    assert exc.value.exit_code == 10
    assert any(p == f"wheelhouse/{wheel.name}" and "sha256" in r for p, r in exc.value.problems)
    assert current(prefix).endswith(r1["release"])
    assert [p.name for p in (prefix / "releases").iterdir()] == [r1["release"]]
    last = status(prefix, stack=False)["last_attempt"]
    assert last["result"] == "failed" and "does not verify" in last["error"]


def test_a_file_swapped_after_verify_is_refused(v1, keyring, tmp_path):
    """The copy into the release is hashed against what verify saw (time-of-check/time-of-use)."""
    prefix = tmp_path / "box"

    def swap(step: str) -> None:
        if step == "metadata":
            (v1 / "sbom" / "python.cdx.json").write_text("{}")

    with pytest.raises(InstallError, match=r"sbom/python.cdx.json: changed after verification"):
        install_bundle(v1, keyring, opts(prefix, on_step=swap))
    assert not (prefix / "current").exists() and not list((prefix / "releases").iterdir())


KILL = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from appliance.install import InstallOptions, install_bundle
    bundle, keyring, prefix, at = sys.argv[1:]
    def step(name):
        if name == at:
            os.kill(os.getpid(), signal.SIGKILL)
    install_bundle(Path(bundle), Path(keyring), InstallOptions(prefix=Path(prefix), progress=False, on_step=step))
""")


@pytest.mark.parametrize("at", ["verify", "metadata", "venv", "models", "receipt"])
def test_kill_9_mid_install_leaves_the_previous_one_working(v1, v2, keyring, tmp_path, at):
    prefix = tmp_path / "box"
    r1 = install_bundle(v1, keyring, opts(prefix))
    proc = subprocess.run([sys.executable, "-c", KILL, str(v2), str(keyring), str(prefix), at],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert current(prefix).endswith(r1["release"])
    assert subprocess.run([venv_python(prefix), "-c", "import alpha"]).returncode == 0
    assert status(prefix, stack=False)["current"]["version"] == "1.0.0"
    # the next run cleans up and completes
    r2 = install_bundle(v2, keyring, opts(prefix))
    assert r2["result"] == "installed" and current(prefix).endswith(r2["release"])
    assert all((p / "receipt.json").is_file() for p in (prefix / "releases").iterdir())


DISK_FULL = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size=160m tmpfs "$PREFIX"
    "$PY" -m appliance install "$V1" --keyring "$KR" --prefix "$PREFIX" --no-progress >/dev/null
    free=$(df --output=avail -k "$PREFIX" | tail -1)
    head -c $(( (free - 6144) * 1024 )) /dev/zero > "$PREFIX/filler"
    set +e
    "$PY" -m appliance install "$V2" --keyring "$KR" --prefix "$PREFIX" --no-progress
    echo "rc=$?"
    readlink "$PREFIX/current"
    ls "$PREFIX/releases"
    "$PREFIX/current/venv/bin/python" -c "import alpha; print('alpha ok')"
""")


def test_disk_full_during_staging(v1, v2, keyring, tmp_path):
    prefix = tmp_path / "box"
    prefix.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", DISK_FULL],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFIX": str(prefix), "PY": sys.executable, "V1": str(v1),
                               "V2": str(v2), "KR": str(keyring)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "rc=20" in lines, proc.stdout + proc.stderr
    assert "disk full" in proc.stderr and "previous install is intact" in proc.stderr, proc.stderr
    releases = lines[lines.index("rc=20") + 2:-1]
    assert len(releases) == 1 and lines[lines.index("rc=20") + 1] == f"releases/{releases[0]}"
    assert lines[-1] == "alpha ok"


def test_cli_install_status_rollback(v1, v2, keyring, tmp_path):
    prefix = tmp_path / "box"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True)

    assert cli("status", "--prefix", str(prefix)).returncode == 1
    p = cli("stack", "up", "--prefix", str(prefix))
    assert p.returncode == 20 and "nothing is installed" in p.stderr
    p = cli("install", str(v1), "--keyring", str(keyring), "--prefix", str(prefix), "--no-progress")
    assert p.returncode == 0 and "installed: test 1.0.0" in p.stdout, p.stderr
    p = cli("install", str(v2), "--keyring", str(keyring), "--prefix", str(prefix), "--no-progress")
    assert p.returncode == 0, p.stderr
    p = cli("status", "--prefix", str(prefix))
    assert p.returncode == 0 and "current: test 1.1.0" in p.stdout and "previous: test 1.0.0" in p.stdout
    p = cli("stack", "up", "--prefix", str(prefix))
    assert p.returncode == 20 and "has no stack" in p.stderr  # this bundle has no images
    p = cli("rollback", "--prefix", str(prefix))
    assert p.returncode == 0
    st = json.loads(cli("status", "--prefix", str(prefix), "--json").stdout)
    assert st["current"]["version"] == "1.0.0" and st["previous"]["version"] == "1.1.0"
    p = cli("install", str(tmp_path / "nope"), "--keyring", str(keyring), "--prefix", str(prefix))
    assert p.returncode == 2 and "not a bundle directory" in p.stderr


def test_pip_makes_the_same_venv_when_asked(v1, keyring, tmp_path):
    """The fallback for a box where the bundle's uv cannot run: pip, offline, hashes required, markers kept."""
    prefix = tmp_path / "box"
    receipt = install_bundle(v1, keyring, opts(prefix, installer="pip"))
    assert receipt["venv"]["tool"].startswith("pip ")
    reqs = (prefix / "current" / "bundle" / "lockfiles" / "pip-requirements.txt").read_text()
    assert 'x86only==1.0 ; platform_machine == "x86_64"' in reqs and "--hash=sha256:" in reqs
    out = subprocess.run([venv_python(prefix), "-c", "import alpha, fastlib, x86only, appliance; print(alpha.__version__)"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "1.0", out.stderr
    cli = subprocess.run([prefix / "current" / "venv" / "bin" / "appliance", "--version"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_wheel_changed_after_verify_is_refused(v1, keyring, tmp_path, installer):
    """uv and pip read wheels from the bundle after verify: --require-hashes is what guards that read."""
    prefix = tmp_path / "box"
    wheel = next((v1 / "wheelhouse").glob("alpha-*.whl"))

    def swap(step: str) -> None:
        if step == "venv":  # a well-formed wheel with one more file: only its hash tells
            with zipfile.ZipFile(wheel, "a") as zf:
                zf.writestr("alpha/evil.py", "print('not what was verified')\n")

    with pytest.raises(InstallError, match="(?i)hash|size"):  # uv checks the locked size first
        install_bundle(v1, keyring, opts(prefix, installer=installer, on_step=swap))
    assert not (prefix / "current").exists()
