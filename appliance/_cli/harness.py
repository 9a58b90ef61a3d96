"""``appliance run``: run task directories (or resume runs) against an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from appliance.errors import HarnessError

_EXIT = {"passed": 0, "failed": 1, "error": HarnessError.exit_code, "interrupted": 130}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run agent tasks (Ralph loop with a check) against a local model server")
    p.add_argument("task_dirs", nargs="*", type=Path, metavar="TASK_DIR")
    p.add_argument("--resume", action="append", default=[], metavar="RUN_ID", help="continue a stopped run")
    p.add_argument("--base-url", default=os.environ.get("APPLIANCE_BASE_URL", "http://127.0.0.1:8000"),
                   help="server root ($APPLIANCE_BASE_URL; default %(default)s)")
    p.add_argument("--model", default=os.environ.get("APPLIANCE_MODEL"), help="default: the first served model")
    p.add_argument("--api-key", default=os.environ.get("APPLIANCE_API_KEY"))
    p.add_argument("--runs-dir", help="runs root (default $APPLIANCE_RUNS_DIR or the user data dir)")
    for name, kind in (("max-iterations", int), ("max-steps", int), ("max-tokens", int), ("max-seconds", float),
                       ("shell-timeout", float), ("check-timeout", float)):
        p.add_argument(f"--{name}", type=kind, help="overrides task.toml [limits]")
    p.add_argument("--tool-choice", default="auto", help="auto | required | none (default %(default)s)")
    p.add_argument("--max-completion-tokens", type=int, help="max_tokens per LLM call")
    p.add_argument("--temperature", type=float)
    p.add_argument("--no-model-reflection", action="store_true", help="reflect with the check output only")
    p.add_argument("--wait-seconds", type=float, default=120.0, help="how long to wait for the server")
    p.add_argument("--otlp-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
                   help="OTLP http/protobuf base URL (default http://127.0.0.1:4318; 'none' disables)")
    p.add_argument("--capture-content", action="store_true", help="record prompts and completions in spans")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from appliance.harness.client import ChatClient
    from appliance.harness.loop import RunConfig, run_tasks
    from appliance.harness.store import runs_root
    from appliance.harness.telemetry import DEFAULT_OTLP_ENDPOINT

    # A collector that is down is normal on an air-gapped box: keep the exporter's retries quiet.
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    if not args.task_dirs and not args.resume:
        raise HarnessError("give at least one TASK_DIR or --resume RUN_ID")
    endpoint = args.otlp_endpoint or DEFAULT_OTLP_ENDPOINT
    limits = {k: getattr(args, k) for k in ("max_iterations", "max_steps", "max_tokens", "max_seconds",
                                             "shell_timeout", "check_timeout")}
    config = RunConfig(
        client=ChatClient(args.base_url, args.model, api_key=args.api_key),
        runs_dir=runs_root(args.runs_dir),
        otlp_endpoint=None if endpoint.lower() == "none" else endpoint,
        capture_content=args.capture_content,
        model_reflection=not args.no_model_reflection,
        tool_choice=args.tool_choice,
        max_completion_tokens=args.max_completion_tokens,
        temperature=args.temperature,
        wait_ready_s=args.wait_seconds,
        limit_overrides={k: v for k, v in limits.items() if v is not None},
    )
    previous = {sig: signal.signal(sig, lambda *_: config.cancel.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        states = run_tasks(args.task_dirs, config, args.resume)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        config.client.close()
    for s in states:
        print(f"{s.run_id}\t{s.status}\titerations={s.iterations}\ttokens={s.input_tokens + s.output_tokens}\t"
              f"{config.runs_dir / s.run_id}\t{s.reason}")
    if config.cancel.is_set():
        print("appliance: interrupted", file=sys.stderr)
    return max(_EXIT[s.status] for s in states)
