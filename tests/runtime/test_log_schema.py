"""The log schema both programs write: the same fields in JSON and in text, Kopf's records included."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from kopf._cogs.configs.configuration import OperatorSettings
from kopf._core.actions.loggers import LocalObjectLogger
from worker_harness import WorkerProcess, add_tenant, finished_job, inbound, node_bullmq

from falachefe_runtime.observability.logging import LogFormat, formatter, log_context
from falachefe_runtime.queues import WHATSAPP_QUEUE, Queues

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def capture() -> Iterator[dict[LogFormat, io.StringIO]]:
    """The root logger written twice, as JSON and as text, like the programs' one handler."""
    streams: dict[LogFormat, io.StringIO] = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = []
    for fmt, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter(fmt))
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    yield streams
    logging.getLogger().setLevel(previous)
    for handler in handlers:
        logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_context_and_extras_are_fields_in_both_formats(capture: dict[LogFormat, io.StringIO]) -> None:
    log = logging.getLogger("falachefe_runtime.worker.runner")
    with log_context(namespace="shop", name="demo", pool="auth", queue="whatsapp-processing"):
        with log_context(job_id="42"):
            log.error("bullmq worker error", extra={"error": "ConnectionError('Connection refused')"})
        log.info("worker started", extra={"concurrency": 5})
    failed, started = (json.loads(line) for line in lines(capture["json"]))
    assert RFC3339_UTC.match(failed["time"]), failed["time"]
    assert failed == {
        "time": failed["time"],
        "level": "error",
        "logger": "falachefe_runtime.worker.runner",
        "message": "bullmq worker error",
        "namespace": "shop",
        "name": "demo",
        "pool": "auth",
        "queue": "whatsapp-processing",
        "job_id": "42",
        "error": "ConnectionError('Connection refused')",
    }
    assert "job_id" not in started, "the inner context ended with its block"
    assert started["concurrency"] == 5

    text = lines(capture["text"])[0]
    assert text.startswith(failed["time"] + " ERROR    falachefe_runtime.worker.runner: bullmq worker error ")
    # Nothing the JSON line has is lost in the text line.
    fields = "namespace=shop name=demo pool=auth queue=whatsapp-processing job_id=42"
    assert text.endswith(f"{fields} error=\"ConnectionError('Connection refused')\"")


def test_an_exception_is_a_field_and_a_line_stays_one_json_object(capture: dict[LogFormat, io.StringIO]) -> None:
    log = logging.getLogger("falachefe.operator")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("reconcile failed; retrying")
    [line] = lines(capture["json"])
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: bad\nthing")


async def test_kopf_object_records_carry_the_object_as_fields(capture: dict[LogFormat, io.StringIO]) -> None:
    """Kopf's own per-object logger (a real one) attaches k8s_ref: it becomes namespace, name and kind."""
    body = {
        "apiVersion": "falachefe.io/v1alpha1",
        "kind": "Falachefe",
        "metadata": {"namespace": "shop", "name": "demo", "uid": "1234"},
    }
    logger = LocalObjectLogger(body=body, settings=OperatorSettings())  # type: ignore[arg-type]
    logger.warning("Handler 'falachefe_changed' failed temporarily: retrying")
    await asyncio.sleep(0)
    [line] = lines(capture["json"])
    record = json.loads(line)
    assert record["logger"] == "kopf.objects"
    assert record["level"] == "warning"
    assert (record["namespace"], record["name"], record["kind"]) == ("shop", "demo", "Falachefe")
    # Kopf's internals (its settings object, its posting flag, the raw reference) are not log fields.
    assert not {"settings", "k8s_skip", "k8s_ref"} & set(record)
    assert " namespace=shop name=demo kind=Falachefe" in lines(capture["text"])[0]


def test_a_connection_string_in_a_message_or_a_field_loses_its_password(capture: dict[LogFormat, io.StringIO]) -> None:
    log = logging.getLogger("falachefe_runtime.worker.app")
    url = "redis://app:Zq/Wv#Xj?Pk@redis.shop:6379/0"
    log.error("cannot reach %s", url, extra={"dsn": "host=db user=app password='Yb Kx'", "error": f"refused: {url}"})
    for fmt in ("json", "text"):
        line = capture[fmt].getvalue()
        assert "redis://app:***@redis.shop:6379/0" in line and "password=***" in line
        assert not [piece for piece in ("Zq", "Wv", "Xj", "Pk", "Yb", "Kx") if piece in line], line


@pytest.mark.slow
async def test_a_worker_process_writes_the_same_fields_in_text_as_in_json(
    sql: asyncpg.Connection, values: dict[str, Any], redis_url: str, queues: Queues, tmp_path: Path
) -> None:
    """The real program, not only the formatter: a failed job's line keeps its job id, reason and detail."""
    tenant = await add_tenant(sql)
    seen: dict[str, dict[str, str]] = {}
    for fmt in ("json", "text"):
        data = inbound(tenant)
        data["messageData"]["companyId"] = 12345
        [job_id] = node_bullmq(
            "add", {"redis": redis_url, "jobs": [{"queue": WHATSAPP_QUEUE, "name": "process-message", "data": data}]}
        )["ids"]
        worker = WorkerProcess(
            "auth", {**values, "observability": {**values["observability"], "log_format": fmt}}, tmp_path / f"{fmt}.log"
        )
        try:
            await finished_job(queues, WHATSAPP_QUEUE, job_id, timeout=60)
        finally:
            worker.stop()
        log = worker.log_path.read_text(errors="replace")
        [line] = [line for line in log.splitlines() if "job failed permanently" in line]
        if fmt == "json":
            record = json.loads(line)
            seen[fmt] = {key: str(record[key]) for key in ("job_id", "queue", "pool", "reason", "detail", "attempt")}
        else:
            assert line.split()[1:4] == ["WARNING", "falachefe_runtime.worker.runner:", "job"]
            seen[fmt] = {key: value.strip('"') for key, value in re.findall(r' (\w+)=("[^"]*"|\S+)', line)}
        assert seen[fmt].pop("job_id") == job_id
    text_fields = seen["text"]
    assert {key: text_fields.get(key) for key in seen["json"]} == seen["json"]
    assert seen["text"]["reason"] == "invalid_payload" and "companyId" in seen["text"]["detail"]
