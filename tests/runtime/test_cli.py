"""``falachefe-runtime``: configuration errors name the field and never the secret; the operator commands work."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from worker_harness import RUNTIME_CLI, cli, worker_env

from falachefe_runtime.queues import WHATSAPP_QUEUE

SECRET_DSN = "postgresql://falachefe:hunter2-secret@127.0.0.1:1/falachefe"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FALACHEFE_"):
            monkeypatch.delenv(name)


def test_bad_config_names_the_fields_and_not_the_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALACHEFE_DATABASE__DSN", SECRET_DSN)
    monkeypatch.setenv("FALACHEFE_WORKER__CONCURRENCY", "lots")
    monkeypatch.setenv("FALACHEFE_DATABASE__PRIMARY__MIN_SIZE", "50")
    code, _ = cli(["queues"])
    error = capsys.readouterr().err
    assert code == 2
    assert "FALACHEFE_WORKER__CONCURRENCY (worker.concurrency): Input should be a valid integer" in error
    assert "FALACHEFE_DATABASE__PRIMARY__MIN_SIZE (database.primary): " in error
    assert "hunter2" not in error and "lots" not in error


def test_config_file_typos_are_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("worker:\n  concurency: 4\n")
    monkeypatch.setenv("FALACHEFE_CONFIG_FILE", str(config))
    assert cli(["queues"])[0] == 2
    assert f"worker.concurency in {config}: Extra inputs are not permitted" in capsys.readouterr().err


def test_worker_refuses_to_start_without_the_pools_secrets(values: dict, tmp_path: Path) -> None:
    env = worker_env({key: value for key, value in values.items() if key not in ("auth", "llm")}, "crew")
    env["FALACHEFE_DATABASE__DSN"] = SECRET_DSN
    env["FALACHEFE_OBSERVABILITY__LOG_FORMAT"] = "json"
    done = subprocess.run(
        [str(RUNTIME_CLI), "worker", "--pool", "crew"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["message"] == "cannot start: the crew pool needs llm.api_key: set FALACHEFE_LLM__API_KEY"
    assert record["variables"] == ["FALACHEFE_LLM__API_KEY"] and record["pool"] == "crew"
    assert "hunter2" not in done.stderr + done.stdout


def test_migrate_enqueue_queues_and_failed(monkeypatch: pytest.MonkeyPatch, pg_dsn: str, redis_url: str) -> None:
    monkeypatch.setenv("FALACHEFE_DATABASE__DSN", pg_dsn)
    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)

    code, out = cli(["migrate"])
    assert code == 0 and json.loads(out)["applied"] == [1, 2, 3]
    code, out = cli(["migrate"])
    assert code == 0 and json.loads(out) == {
        "schema_version": 3,
        "applied": [],
        "created_indexes": [],
        "rebuilt_indexes": [],
    }

    company = "6f1c2d9e-2b7a-4c1e-9a57-0d4c8f3e2a11"
    code, out = cli(["enqueue-message", "--company", company, "--phone", "+5511987654321", "--text", "Oi!"])
    assert code == 0
    enqueued = json.loads(out)
    assert enqueued["queue"] == WHATSAPP_QUEUE
    code, out = cli(
        ["enqueue-message", "--company", company, "--phone", "+55 11 98765", "--text", "x", "--priority", "1"]
    )
    assert code == 2

    code, out = cli(["queues", "--json"])
    counts = json.loads(out)
    assert counts[WHATSAPP_QUEUE]["wait"] == 1
    assert set(counts) == {"whatsapp-processing", "crewai-processing", "admin-tasks", "whatsapp-outbound"}
    code, out = cli(["queues"])
    assert out.splitlines()[0].split()[:3] == ["QUEUE", "WAIT", "PAUSED"]

    code, out = cli(["failed", "--queue", WHATSAPP_QUEUE])
    assert code == 0 and json.loads(out) == []
