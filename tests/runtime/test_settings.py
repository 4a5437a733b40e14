"""Where the runtime's settings come from, and what a person sees when one is wrong.

Stray ``FALACHEFE_*`` variables (a build tool's, a whole section as JSON)
never stop a command; a setting that does not parse is named by its
variable; secrets may come from mounted files; every ``--help`` lists the
variables; and a worker that cannot start says why in one log line naming
the setting, with no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from worker_harness import RUNTIME_CLI, cli, worker_env

from falachefe_devstack.process import free_port
from falachefe_runtime.cli import build_parser
from falachefe_runtime.config import RuntimeConfig, env_name, is_secret, setting_fields
from falachefe_runtime.queues import WHATSAPP_QUEUE

PASSWORD = "s3cret-never-printed"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FALACHEFE_"):
            monkeypatch.delenv(name)


def test_foreign_falachefe_variables_never_break_a_command(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    # A build tool's cache directory, a section as JSON, a build stamp: none is a setting.
    monkeypatch.setenv("FALACHEFE_CACHE", str(tmp_path))
    monkeypatch.setenv("FALACHEFE_WORKER", '{"concurrency": "not even checked"}')
    monkeypatch.setenv("FALACHEFE_BUILD_REVISION", "abc123")
    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)
    code, out = cli(["queues", "--json"])
    assert code == 0
    assert json.loads(out)[WHATSAPP_QUEUE]["wait"] == 0
    assert RuntimeConfig().cache.l1_max_entries == 1_000


def test_a_setting_that_does_not_parse_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALACHEFE_CACHE__TTL__SESSION_S", "a day")
    monkeypatch.setenv("FALACHEFE_DATABASE__DSN", f"mysql://falachefe:{PASSWORD}@db/falachefe")
    assert cli(["migrate"])[0] == 2
    error = capsys.readouterr().err
    assert "FALACHEFE_CACHE__TTL__SESSION_S (cache.ttl.session_s): Input should be a valid integer" in error
    assert "FALACHEFE_DATABASE__DSN (database.dsn): Value error, must start with postgresql:// or postgres://" in error
    assert PASSWORD not in error and "a day" not in error


def test_secrets_can_come_from_mounted_files(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mounted = tmp_path / "redis.url"
    mounted.write_text(redis_url + "\n")  # as `kubectl create secret --from-file` keeps an editor's newline
    monkeypatch.setenv("FALACHEFE_REDIS__URL_FILE", str(mounted))
    assert RuntimeConfig().redis.url is not None
    assert RuntimeConfig().redis.url.get_secret_value() == redis_url
    assert cli(["queues"])[0] == 0

    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)
    assert cli(["queues"])[0] == 2
    assert "set FALACHEFE_REDIS__URL or FALACHEFE_REDIS__URL_FILE, not both" in capsys.readouterr().err

    monkeypatch.delenv("FALACHEFE_REDIS__URL")
    monkeypatch.setenv("FALACHEFE_REDIS__URL_FILE", str(tmp_path / "missing"))
    assert cli(["queues"])[0] == 2
    assert f"FALACHEFE_REDIS__URL_FILE={tmp_path / 'missing'}: cannot read the file" in capsys.readouterr().err


def test_only_secrets_have_a_file_variant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "concurrency").write_text("7")
    monkeypatch.setenv("FALACHEFE_WORKER__CONCURRENCY_FILE", str(tmp_path / "concurrency"))
    assert RuntimeConfig().worker.concurrency is None
    assert {name for name, field in setting_fields().items() if is_secret(field)} == {
        "database.dsn",
        "database.replica_dsn",
        "redis.url",
        "llm.api_key",
        "auth.otp_secret",
    }


@pytest.mark.parametrize("command", ["worker", "migrate", "queues", "failed", "enqueue-message"])
def test_every_help_lists_the_variables_and_the_config_file(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "FALACHEFE_CONFIG_FILE" in text
    for dotted in setting_fields():
        assert env_name(dotted) in text, dotted
    # The section's default (a smaller replica pool), not the class's.
    assert "FALACHEFE_DATABASE__REPLICA__MAX_SIZE             default 10" in text
    assert "FALACHEFE_DATABASE__DSN_FILE" in text


def _run_worker(env: dict[str, str], pool: str = "auth") -> tuple[int, list[dict[str, Any]], str]:
    env = {**env, "FALACHEFE_OBSERVABILITY__LOG_FORMAT": "json"}
    done = subprocess.run(
        [str(RUNTIME_CLI), "worker", "--pool", pool], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON record
    return done.returncode, lines, done.stderr + done.stdout


def _start_values(values: dict[str, Any]) -> dict[str, Any]:
    observability = {**values["observability"], "health_port": free_port(), "metrics_port": free_port()}
    return {**values, "observability": observability}


def test_a_worker_that_cannot_reach_its_database_says_so_in_one_line(values: dict[str, Any]) -> None:
    env = worker_env(_start_values(values), "auth")
    env["FALACHEFE_DATABASE__DSN"] = f"postgresql://falachefe:{PASSWORD}@127.0.0.1:{free_port()}/falachefe"
    env["FALACHEFE_DATABASE__CONNECT_TIMEOUT_S"] = "1"
    env["FALACHEFE_WORKER__CONCURENCY"] = "3"  # a typo: warned about, not fatal
    code, lines, output = _run_worker(env)
    assert code == 1
    assert "Traceback" not in output and PASSWORD not in output
    [warning] = [line for line in lines if line["level"] == "warning"]
    assert warning["variable"] == "FALACHEFE_WORKER__CONCURENCY"
    [error] = [line for line in lines if line["level"] == "error"]
    assert error["message"].startswith("cannot start: cannot open database.dsn: ")
    assert "ConnectionRefusedError" in error["message"]
    assert error["config"] == ["database.dsn"] and error["variables"] == ["FALACHEFE_DATABASE__DSN"]
    assert error["pool"] == "auth" and error["queue"] == WHATSAPP_QUEUE
    assert error["time"].endswith("Z")


def test_a_worker_that_cannot_reach_redis_says_so_in_one_line(values: dict[str, Any]) -> None:
    env = worker_env(_start_values(values), "auth")
    env["FALACHEFE_REDIS__URL"] = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    code, lines, output = _run_worker(env)
    assert code == 1
    assert "Traceback" not in output and PASSWORD not in output
    [error] = [line for line in lines if line["level"] == "error"]
    assert error["message"].startswith("cannot start: cannot reach redis.url: ")
    assert error["variables"] == ["FALACHEFE_REDIS__URL"]


def test_a_worker_with_a_bad_setting_says_which_variable_in_one_line(values: dict[str, Any]) -> None:
    env = worker_env(_start_values(values), "auth")
    env["FALACHEFE_QUEUES__LOCK_DURATION_S"] = "-5"
    code, lines, output = _run_worker(env)
    assert code == 2
    [error] = lines
    assert error["level"] == "error" and error["pool"] == "auth"
    assert (
        "FALACHEFE_QUEUES__LOCK_DURATION_S (queues.lock_duration_s): Input should be greater than 0" in error["message"]
    )
    assert "Traceback" not in output
