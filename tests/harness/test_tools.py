"""Tools confined to the workspace, sandboxed shell, and tool errors returned as results."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from appliance.harness import sandbox
from appliance.harness.tools import READ_CAP, Toolbox


@pytest.fixture
def box(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    return Toolbox(workspace, shell_timeout=2, output_cap=1000)


def call(box: Toolbox, name: str, **args):
    return box.execute(name, json.dumps(args))


def test_write_read_list_roundtrip(box):
    assert not call(box, "write_file", path="sub/a.txt", content="hello").is_error
    assert call(box, "read_file", path="sub/../sub/a.txt").content == "hello"
    assert call(box, "list_dir").content == "sub/"
    assert call(box, "list_dir", path="sub").content == "a.txt"


@pytest.mark.parametrize("name, raw, message", [
    ("read_file", '{"path": "a.txt"', "arguments are not valid JSON"),
    ("read_file", '["a.txt"]', "arguments must be a JSON object"),
    ("read_file", '{"path": 5}', "invalid arguments for read_file: path: Input should be a valid string"),
    ("write_file", '{"path": "a"}', "invalid arguments for write_file: content: Field required"),
    ("rm_rf", "{}", "unknown tool 'rm_rf'"),
])
def test_malformed_calls_become_error_results(box, name, raw, message):
    result = box.execute(name, raw)
    assert result.is_error and message in result.content


@pytest.mark.parametrize("path, message", [
    ("../secret.txt", "leads outside the workspace"),
    ("sub/../../secret.txt", "leads outside the workspace"),
    ("/etc/passwd", "absolute path"),
    ("", "invalid path"),
])
def test_path_escapes_are_refused(box, path, message):
    for result in (call(box, "read_file", path=path), call(box, "write_file", path=path, content="x")):
        assert result.is_error and message in result.content
    assert (box.workspace.parent / "secret.txt").read_text() == "outside"


def test_symlink_pointing_outside_is_refused(box):
    os.symlink(box.workspace.parent / "secret.txt", box.workspace / "link.txt")
    os.symlink(box.workspace.parent, box.workspace / "up")
    assert "leads outside" in call(box, "read_file", path="link.txt").content
    assert "leads outside" in call(box, "write_file", path="up/new.txt", content="x").content
    assert "leads outside" in call(box, "list_dir", path="up").content
    assert not (box.workspace.parent / "new.txt").exists()


def test_missing_file_is_an_error_result(box):
    result = call(box, "read_file", path="nope.txt")
    assert result.is_error and "No such file" in result.content


def test_read_is_capped(box):
    (box.workspace / "big.txt").write_text("x" * (READ_CAP + 10))
    assert call(box, "read_file", path="big.txt").content.endswith(f"[... truncated at {READ_CAP} bytes ...]")


def test_shell_runs_in_workspace_and_reports_exit_code(box):
    result = call(box, "shell", command="echo hi > f.txt; cat f.txt; exit 3")
    assert not result.is_error and result.content == "exit code: 3\nhi\n"
    assert (box.workspace / "f.txt").read_text() == "hi\n"


def test_shell_timeout_kills_the_command(box):
    result = call(box, "shell", command="echo started; sleep 30", timeout=0.5)
    assert result.is_error and "timed out after 0.5s" in result.content and "started" in result.content


def test_shell_output_is_capped_head_and_tail(box):
    result = call(box, "shell", command="seq 1 100000")
    assert "bytes omitted" in result.content and len(result.content) < 1200
    assert result.content.splitlines()[1] == "1" and result.content.rstrip().endswith("100000")


def test_shell_cannot_write_outside_the_workspace(box):
    if sandbox.detect().kind != "bwrap":
        pytest.skip("only bwrap confines the filesystem")
    result = call(box, "shell", command=f"echo x > {box.workspace.parent}/escaped.txt; echo x > /usr/escaped.txt")
    assert "Read-only file system" in result.content  # system dirs are read-only
    assert not (box.workspace.parent / "escaped.txt").exists()  # the rest of the tree is a private tmpfs


def test_shell_sandbox_has_no_network(box, server):
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {server.port}), 2); print('CONNECTED')\""
    outside = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, timeout=10)
    assert "CONNECTED" in outside.stdout  # the server is reachable without the sandbox
    result = call(box, "shell", command=probe)
    assert "CONNECTED" not in result.content
    assert "exit code: 1" in result.content and ("Network is unreachable" in result.content
                                                 or "Connection refused" in result.content)
