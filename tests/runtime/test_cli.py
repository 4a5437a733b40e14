"""``falachefe-runtime``: configuration errors name the field and never the secret; the operator commands work."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from bullmq import Job, Worker
from worker_harness import RUNTIME_CLI, cli, eventually, node_bullmq, worker_env

from falachefe_runtime.failed_jobs import BATCH
from falachefe_runtime.queues import WHATSAPP_QUEUE, Queues

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
    assert code == 0 and json.loads(out)["applied"] == [1, 2, 3, 4]
    code, out = cli(["migrate"])
    assert code == 0 and json.loads(out) == {
        "schema_version": 4,
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


# -- failed jobs: listed whatever their JSON, retried with their attempts afresh ------------------------

#: A queue of its own, without the seed's backoff: each job's two attempts fail at once.
RETRY_QUEUE = "cli-retry"


async def fail_every_job(redis_url: str, queue: str, count: int) -> None:
    """Run a bullmq worker whose every attempt raises, until ``count`` jobs of ``queue`` are failed."""
    raw = redis.Redis.from_url(redis_url)

    async def attempt(job: Job, token: str) -> None:
        raise RuntimeError(f"boom in {job.name}")

    worker = Worker(queue, attempt, {"connection": redis_url, "concurrency": 20})
    try:
        await eventually(
            lambda: _at_least(raw.zcard(f"bull:{queue}:failed"), count), f"{count} failed jobs", timeout=120
        )
    finally:
        await worker.close()
        await raw.aclose()


async def _at_least(awaitable: Any, count: int) -> bool | None:
    return True if await awaitable >= count else None


def node_failed_jobs(redis_url: str, names: list[str]) -> list[str]:
    """Jobs the original app's producer enqueues, two attempts each: their ids."""
    jobs = [
        {"queue": RETRY_QUEUE, "name": name, "data": {"n": n}, "opts": {"attempts": 2}} for n, name in enumerate(names)
    ]
    return node_bullmq("add", {"redis": redis_url, "jobs": jobs}, timeout=120)["ids"]


async def test_failed_jobs_are_retried_by_id_by_filter_or_all_with_their_attempts_afresh(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queues: Queues
) -> None:
    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)
    ids = node_failed_jobs(redis_url, ["process-message", "send-reply", "send-reply", "process-message"])
    await fail_every_job(redis_url, RETRY_QUEUE, 4)

    code, out = await asyncio.to_thread(cli, ["failed", "--queue", RETRY_QUEUE])
    listed = json.loads(out)
    assert code == 0 and sorted(job["id"] for job in listed) == sorted(ids)
    assert {job["attemptsMade"] for job in listed} == {2}
    assert {job["failedReason"] for job in listed} == {"boom in process-message", "boom in send-reply"}
    code, out = await asyncio.to_thread(cli, ["failed", "--queue", RETRY_QUEUE, "--reason", "send-reply"])
    assert sorted(job["id"] for job in json.loads(out)) == sorted(ids[1:3])
    code, out = await asyncio.to_thread(cli, ["failed", "--queue", RETRY_QUEUE, "--older-than", "1h"])
    assert json.loads(out) == []
    await asyncio.sleep(1.1)
    code, out = await asyncio.to_thread(cli, ["failed", "--queue", RETRY_QUEUE, "--older-than", "1s", "--limit", "3"])
    assert len(json.loads(out)) == 3

    # Nothing said about which jobs: refused, nothing retried.
    code, _ = await asyncio.to_thread(cli, ["retry", "--queue", RETRY_QUEUE])
    assert code == 2
    assert (await queues.counts(RETRY_QUEUE))["failed"] == 4

    code, out = await asyncio.to_thread(cli, ["retry", "--queue", RETRY_QUEUE, "--id", ids[0], "--id", "no-such-job"])
    assert code == 1
    assert json.loads(out) == {
        "queue": RETRY_QUEUE,
        "retried": 1,
        "ids": [ids[0]],
        "refused": {},
        "notFailed": ["no-such-job"],
    }
    job = await queues.queue(RETRY_QUEUE).getJob(ids[0])
    assert await job.getState() == "waiting"
    assert (job.attemptsMade, job.attemptsStarted, job.failedReason, job.finishedOn) == (0, 0, None, 0)

    code, out = await asyncio.to_thread(cli, ["retry", "--queue", RETRY_QUEUE, "--name", "send-reply"])
    assert code == 0 and sorted(json.loads(out)["ids"]) == sorted(ids[1:3])
    code, out = await asyncio.to_thread(cli, ["retry", "--queue", RETRY_QUEUE, "--all"])
    assert code == 0 and json.loads(out)["ids"] == [ids[3]]
    assert (await queues.counts(RETRY_QUEUE))["wait"] == 4

    # Each retried job gets both its attempts again (with the old count it would fail after one).
    await fail_every_job(redis_url, RETRY_QUEUE, 4)
    code, out = await asyncio.to_thread(cli, ["failed", "--queue", RETRY_QUEUE])
    assert {job["attemptsMade"] for job in json.loads(out)} == {2}


async def test_a_malformed_failed_job_is_listed_with_its_field_and_refused_by_retry(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queues: Queues
) -> None:
    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)
    ids = node_failed_jobs(redis_url, ["process-message"] * 3)
    await fail_every_job(redis_url, RETRY_QUEUE, 3)
    # What a buggy producer or a hand edit leaves: JSON that does not parse, a count that is not a number.
    raw = redis.Redis.from_url(redis_url)
    await raw.hset(f"bull:{RETRY_QUEUE}:{ids[1]}", mapping={"data": '{"n": 1', "atm": "two"})
    await raw.aclose()
    with pytest.raises(json.JSONDecodeError):
        await queues.queue(RETRY_QUEUE).getJobs(["failed"])  # why the CLI reads the hashes itself

    code, out = await asyncio.to_thread(cli, ["failed", "--queue", RETRY_QUEUE])
    listed = {job["id"]: job for job in json.loads(out)}
    assert code == 0 and set(listed) == set(ids)
    assert listed[ids[1]]["malformed"] == {"data": "not valid JSON", "atm": "not an integer"}
    assert "malformed" not in listed[ids[0]]

    code, out = await asyncio.to_thread(cli, ["retry", "--queue", RETRY_QUEUE, "--all"])
    report = json.loads(out)
    assert code == 1
    assert sorted(report["ids"]) == sorted([ids[0], ids[2]]) and report["retried"] == 2
    assert report["refused"] == {
        ids[1]: "malformed job, not retried (atm: not an integer, data: not valid JSON); fix or remove it"
    }
    assert (await queues.counts(RETRY_QUEUE))["failed"] == 1


@pytest.mark.slow
async def test_retrying_thousands_of_failed_jobs_reports_progress(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)
    count = 2 * BATCH + 200
    node_failed_jobs(redis_url, ["process-message"] * count)
    await fail_every_job(redis_url, RETRY_QUEUE, count)
    capsys.readouterr()

    started = time.perf_counter()
    code, out = await asyncio.to_thread(cli, ["retry", "--queue", RETRY_QUEUE, "--all"])
    elapsed = time.perf_counter() - started
    assert code == 0 and json.loads(out)["retried"] == count
    assert (await queues.counts(RETRY_QUEUE))["wait"] == count
    progress = capsys.readouterr().err.splitlines()
    assert progress == [
        f"retry {RETRY_QUEUE}: {BATCH}/{count} examined, {BATCH} retried",
        f"retry {RETRY_QUEUE}: {2 * BATCH}/{count} examined, {2 * BATCH} retried",
        f"retry {RETRY_QUEUE}: {count}/{count} examined, {count} retried",
    ]
    with capsys.disabled():
        print(f"\nretried {count} failed jobs in {elapsed:.2f} s ({count / elapsed:.0f} jobs/s)")


def test_a_redis_url_whose_password_breaks_parsers_is_refused_naming_the_field_not_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALACHEFE_REDIS__URL", "redis://:Zq/Wv#Xj@127.0.0.1:6379/0")
    code, _ = cli(["queues"])
    error = capsys.readouterr().err
    assert code == 2
    assert "FALACHEFE_REDIS__URL (redis.url): Value error, its user or password holds '/', '?' or '#'" in error
    assert not [piece for piece in ("Zq", "Wv", "Xj") if piece in error]
