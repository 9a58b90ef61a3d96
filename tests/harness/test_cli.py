"""`appliance run` as a real subprocess (kill -9 + --resume, SIGINT) and `runs`/`export`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from appliance.cli import main
from appliance.harness.store import list_run_dirs, read_events

from .conftest import closed_port, text, tool, wait_for


def start_cli(server, runs_dir: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"APPLIANCE_RUNS_DIR": str(runs_dir),
                        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    return subprocess.Popen([sys.executable, "-m", "appliance", "run", "--base-url", server.url, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events_when(runs_dir: Path, predicate) -> list[dict]:
    def ready():
        dirs = list_run_dirs(runs_dir)
        if dirs and (dirs[0] / "events.jsonl").exists():
            events = read_events(dirs[0] / "events.jsonl")
            return events if predicate(events) else None
        return None
    return wait_for(ready, what="events")


def busy(body):
    """A model that keeps working (shell calls) until told otherwise."""
    if "tools" not in body:
        return text("reflection")
    return tool("shell", {"command": "echo working >> log.txt"})


def finisher(body):
    if "tools" not in body:
        return text("reflection")
    if body["messages"][-1]["role"] == "tool":
        return text("done")
    return tool("write_file", {"path": "done.txt", "content": "x"})


def test_kill_9_mid_run_then_resume_finishes_it(server, make_task, tmp_path):
    runs_dir = tmp_path / "runs"
    server.responder = busy
    proc = start_cli(server, runs_dir, str(make_task()), "--max-steps", "1000")
    events_when(runs_dir, lambda ev: sum(e["type"] == "tool_call" for e in ev) >= 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    [run_dir] = list_run_dirs(runs_dir)
    terminated = (run_dir / "events.jsonl").read_text().split("\n")[:-1]  # the rest may be a torn line
    assert [json.loads(line)["seq"] for line in terminated] == list(range(1, len(terminated) + 1))
    assert len(read_events(run_dir / "events.jsonl")) >= len(terminated) >= 10
    before = json.loads((run_dir / "trajectory.json").read_text())["state"]
    assert before["status"] == "running" and before["steps"] >= 5

    server.responder = finisher
    proc = start_cli(server, runs_dir, "--resume", run_dir.name[:10])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    state = json.loads((run_dir / "trajectory.json").read_text())["state"]
    assert state["status"] == "passed" and state["steps"] == before["steps"] + 2
    assert state["input_tokens"] == 100 * state["steps"]  # tokens carried over from the killed process
    types = [e["type"] for e in read_events(run_dir / "events.jsonl")]
    assert types.count("run_started") == 1 and types.count("run_resumed") == 1 and types[-1] == "run_finished"


def test_sigint_stops_cleanly_with_status_interrupted(server, make_task, tmp_path):
    runs_dir = tmp_path / "runs"
    server.responder = busy
    proc = start_cli(server, runs_dir, str(make_task()), "--max-steps", "1000")
    events_when(runs_dir, lambda ev: any(e["type"] == "tool_call" for e in ev))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    [run_dir] = list_run_dirs(runs_dir)
    events = read_events(run_dir / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "interrupted"
    assert (run_dir / "events.jsonl").read_text().endswith("\n")
    assert json.loads((run_dir / "trajectory.json").read_text())["state"]["status"] == "interrupted"
    assert "\tinterrupted\t" in out


def test_runs_ls_show_and_export(server, make_task, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    task = make_task(files={"keep.txt": "same\n", "edit.txt": "old\n"})
    server.script.extend([tool("write_file", {"path": "edit.txt", "content": "new\n"}),
                          tool("write_file", {"path": "done.txt", "content": "x"}), text("done")])
    common = ["--runs-dir", str(runs_dir)]
    assert main(["run", str(task), "--base-url", server.url, "--otlp-endpoint", "none", *common]) == 0
    [run_dir] = list_run_dirs(runs_dir)
    capsys.readouterr()

    assert main(["runs", "ls", *common]) == 0
    assert run_dir.name in capsys.readouterr().out
    assert main(["runs", "show", run_dir.name[:12], *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "passed" and shown["checks"] == [{"iteration": 1, "passed": True, "exit_code": 0}]

    out = tmp_path / "run.tar.gz"
    assert main(["export", run_dir.name, "-o", str(out), *common]) == 0
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        diff = tar.extractfile(f"{run_dir.name}/workspace.diff").read().decode()
        summary = json.loads(tar.extractfile(f"{run_dir.name}/summary.json").read())
    assert {f"{run_dir.name}/{n}" for n in ("events.jsonl", "traces.otlp.jsonl", "summary.json",
                                             "workspace.diff", "trajectory.json")} <= names
    assert "-old\n+new\n" in diff and "+++ b/done.txt" in diff and "keep.txt" not in diff
    assert summary["run_id"] == run_dir.name and summary["events"]["llm_call"] == 3

    assert main(["export", "--all", "-o", str(tmp_path / "all"), *common]) == 0
    assert [p.name for p in (tmp_path / "all").iterdir()] == [f"{run_dir.name}.tar.gz"]
    assert main(["export", "--all", "-o", str(tmp_path / "all.tar"), *common]) == 0
    with tarfile.open(tmp_path / "all.tar") as tar:
        assert f"{run_dir.name}/workspace.diff" in tar.getnames()
    assert main(["runs", "show", "nope", *common]) == 30
