"""A worker process runs on uvloop and parses Redis replies with hiredis, and says so when it starts."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from worker_harness import WorkerProcess, eventually

pytestmark = pytest.mark.slow


async def test_an_auth_worker_process_runs_on_uvloop_with_hiredis(values: dict[str, Any], tmp_path: Path) -> None:
    values["observability"]["log_format"] = "json"
    worker = WorkerProcess("auth", values, tmp_path / "worker.log")
    try:

        async def started() -> dict[str, Any] | None:
            for line in worker.log().splitlines():
                record = json.loads(line) if line.startswith("{") else {"message": line}
                if record["message"] == "worker started":
                    return record  # type: ignore[no-any-return]
            assert worker.popen.poll() is None, worker.log()
            return None

        record = await eventually(started, "the worker's start-up line", timeout=60)
        assert record["event_loop"] == "uvloop"
        assert record["redis_parser"] == "hiredis"
        worker.send(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log()
    finally:
        worker.stop()
