"""What `bundle build` refuses: bad specs, missing wheels, changed wheels, audits, keys, old output."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from appliance.bundle import build_bundle
from appliance.cli import main
from appliance.errors import AuditError, BundleError, SpecError
from appliance.spec import parse_spec
from appliance._internal import lock, pylock
from appliance._internal.wheelhouse import fetch_wheels

from .conftest import AARCH64, X86_64, alpha_vuln, make_wheel

ONE_TARGET = [("3.11", X86_64)]
SMALL = ("alpha",)


def _nothing_left(out: Path) -> None:
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize(("snippet", "key"), [
    ('[bundle]\nversion = "1"\ncolour = "red"\n[[targets]]\npython = "3.11"\nplatform = "manylinux_2_28_x86_64"\n',
     "bundle.colour: unknown key"),
    ('[bundle]\nversion = "1"\n[[targets]]\npython = "3.11"\nplatform = "manylinux_2_28_x86_64"\n'
     '[[images]]\nname = "x"\nref = "docker.io/x/y:1"\ndigest = "sha256:abc"\n', "images.0.digest"),
    ('[bundle]\nversion = "1"\n[[targets]]\npython = "3.11"\nplatform = "linux_x86_64"\n', "targets.0.platform"),
])
def test_bad_spec_names_the_key(snippet, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        parse_spec(snippet)


def test_package_without_wheel_for_a_target_is_named(make_spec, tmp_path):
    # uv refuses: x86only has no aarch64 wheel and no marker excludes that target.
    spec = make_spec(requirements=("x86only",), targets=[("3.11", X86_64), ("3.11", AARCH64)])
    with pytest.raises(BundleError, match=r"(?s)x86only.*aarch64"):
        build_bundle(spec, tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")


def test_wheel_too_new_for_the_target_glibc_is_named(make_spec, tmp_path):
    # uv's markers know no glibc: newglibc's only wheel is manylinux_2_34, the target is 2_28.
    spec = make_spec(requirements=("newglibc",), targets=ONE_TARGET)
    with pytest.raises(BundleError, match=r"no compatible wheel of newglibc 1\.0 for target cp311-manylinux_2_28_x86_64"):
        build_bundle(spec, tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")


def test_wheel_changed_after_locking_is_refused(make_spec, find_links, tmp_path):
    spec = make_spec(requirements=("alpha",), targets=ONE_TARGET)
    changing = tmp_path / "links"
    changing.mkdir()
    for wheel in find_links.glob("*.whl"):
        (changing / wheel.name).hardlink_to(wheel)
    spec = spec.model_copy(update={"python": spec.python.model_copy(update={"find_links": [str(changing)]})})
    top, packages = pylock.parse(lock.lock(spec, tmp_path / "lockfiles"))
    selection = pylock.select(packages, spec.targets)
    (changing / "beta-1.2-py3-none-any.whl").unlink()
    make_wheel(changing, "beta", "1.2", requires=["gamma"], body="EVIL = True\n")
    house = tmp_path / "wheelhouse"
    with pytest.raises(BundleError, match=r"beta-1\.2-py3-none-any\.whl: does not match the lock"):
        fetch_wheels([s.wheel for s in selection.values()], house, base=tmp_path / "lockfiles", progress=False)
    assert not (house / "beta-1.2-py3-none-any.whl").exists() and not (house / ".incoming").exists()


def test_vulnerability_fails_the_build(make_spec, osv_dump, osv_server, tmp_path):
    url = osv_server(osv_dump([alpha_vuln()]))
    spec = make_spec(requirements=SMALL, targets=ONE_TARGET)
    with pytest.raises(AuditError, match=r"(?s)1 known vulnerabilities.*alpha 1\.0: PYSEC-TEST-1 \(fixed in 1\.1\)"):
        build_bundle(spec, tmp_path / "out", osv_url=url, progress=False)
    _nothing_left(tmp_path / "out")


def test_waived_vulnerability_is_recorded(make_spec, osv_dump, osv_server, tmp_path):
    url = osv_server(osv_dump([alpha_vuln()]))
    spec = make_spec(requirements=SMALL, targets=ONE_TARGET)
    manifest = build_bundle(spec, tmp_path / "out", osv_url=url, waive_audit="fix ships in 1.1, ticket 42", progress=False)
    audit = manifest.audit
    assert (audit.status, audit.vulnerabilities, audit.waiver_reason) == ("waived", 1, "fix ships in 1.1, ticket 42")
    assert audit.report == "audit/pip-audit.json" and "PYSEC-TEST-1" in (tmp_path / "out" / audit.report).read_text()


def test_spec_waiver_and_clean_dump(make_spec, osv_dump, osv_server, tmp_path):
    other = alpha_vuln("PYSEC-TEST-2") | {"affected": [{"package": {"ecosystem": "PyPI", "name": "gamma"},
                                                        "versions": ["0.2"]}]}
    url = osv_server(osv_dump([other]))
    spec = make_spec(requirements=SMALL, targets=ONE_TARGET,
                     extra=f'[audit]\nosv_url = "{url}"\nwaive = true\nwaive_reason = "not needed"\n')
    manifest = build_bundle(spec, tmp_path / "out", progress=False)
    assert (manifest.audit.status, manifest.audit.waiver_reason) == ("clean", None)  # nothing to waive


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/query"


def test_unreachable_service_is_a_failure_not_a_pass(make_spec, tmp_path):
    spec = make_spec(requirements=SMALL, targets=ONE_TARGET)
    with pytest.raises(AuditError, match="pip-audit could not audit"):
        build_bundle(spec, tmp_path / "out", osv_url=_closed_port_url(), progress=False)
    _nothing_left(tmp_path / "out")
    manifest = build_bundle(spec, tmp_path / "out", osv_url=_closed_port_url(), waive_audit="air gap", progress=False)
    assert (manifest.audit.status, manifest.audit.report, manifest.audit.waiver_reason) == ("waived", None, "air gap")
    assert not (tmp_path / "out" / "audit").exists()


def test_no_signing_key_is_refused(make_spec, gpg_keys, tmp_path):
    spec = make_spec(signing=False)
    with pytest.raises(BundleError, match="no signing key"):
        build_bundle(spec, tmp_path / "out", progress=False)
    with pytest.raises(BundleError, match="no secret key for " + "0" * 40):
        build_bundle(spec, tmp_path / "out", sign_keys=["0" * 40], gpg_homedir=gpg_keys.homedir, progress=False)
    _nothing_left(tmp_path / "out")


def test_non_empty_out_is_refused(make_spec, tmp_path):
    spec = make_spec()
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match="not an empty directory"):
        build_bundle(spec, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_cli_build_into_empty_dir_with_models(make_spec, clean_osv_url, gpg_keys, tmp_path, capsys):
    model = tmp_path / "tiny-model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 1000)
    make_spec(requirements=SMALL, targets=ONE_TARGET, signing=False,
              extra=f'[[models]]\nname = "tiny"\npath = "tiny-model"\n\n[[images]]\nname = "x"\nref = "docker.io/x/y:1"\n')
    out = tmp_path / "out"
    out.mkdir()
    argv = ["bundle", "build", "--spec", str(tmp_path / "appliance.toml"), "--out", str(out), "--no-progress",
            "--sign-key", gpg_keys.keys[1].fingerprint, "--gpg-homedir", str(gpg_keys.homedir),
            "--osv-url", clean_osv_url, "--skip-images"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "images skipped" in printed and "audit clean" in printed
    assert (out / "models" / "tiny" / "sub" / "weights.bin").read_bytes() == b"\0" * 1000
    assert list((out / "signatures").iterdir())[0].name == f"{gpg_keys.keys[1].fingerprint}.asc"
    assert main(argv) == BundleError.exit_code  # now not empty


def test_model_symlink_is_refused(make_spec, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "link").symlink_to("/etc/passwd")
    spec = make_spec(requirements=SMALL, targets=ONE_TARGET, extra='[[models]]\nname = "m"\npath = "m"\n')
    with pytest.raises(BundleError, match="models.m: .*link: not a plain file"):
        build_bundle(spec, tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")
