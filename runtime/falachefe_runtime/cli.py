"""falachefe-runtime: run a worker pool, migrate, and look into and feed the queues.

Every command reads the same configuration as the workers (environment and
``$FALACHEFE_CONFIG_FILE``) and validates it first: a bad value stops the
command with the variable's and the field's name and what is wrong, never
with the value (it may be a secret). Every ``--help`` lists the variables.

    falachefe-runtime worker --pool auth|crew|admin
    falachefe-runtime migrate
    falachefe-runtime queues [--json]
    falachefe-runtime failed --queue whatsapp-processing [--limit 20] [--name N] [--reason TEXT] [--older-than 2h]
    falachefe-runtime retry --queue whatsapp-processing --id ID [--id ID] | --reason TEXT ... | --all
    falachefe-runtime enqueue-message --company UUID --phone +5511... --text "..."
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import SecretStr, ValidationError

from falachefe_runtime.config import (
    CONFIG_FILE_ENV,
    FILE_SUFFIX,
    ConfigSourceError,
    RuntimeConfig,
    WorkerKind,
    describe_config_error,
    env_name,
    is_secret,
    setting_fields,
)
from falachefe_runtime.failed_jobs import BATCH, FailedJob, FailedSet, RetryReport, Selection, retry_selected
from falachefe_runtime.observability.logging import configure_logging
from falachefe_runtime.payloads import PROCESS_MESSAGE, InboundMessage, ProcessMessage
from falachefe_runtime.queues import ALL_QUEUES, COUNT_STATES, WHATSAPP_QUEUE, Queues
from falachefe_runtime.redact import redact_text
from falachefe_runtime.validation import describe_validation_error

#: Exit codes: 2 is a usage or configuration error, as argparse uses it.
EXIT_CONFIG = 2
#: ``retry`` left some selected jobs where they were (malformed, or not failed): the output says which.
EXIT_NOT_ALL_RETRIED = 1


class ConfigError(Exception):
    """The configuration cannot run this command; the message names the field."""


def load_config(**overrides: Any) -> RuntimeConfig:
    try:
        return RuntimeConfig(**overrides)
    except ValidationError as error:
        raise ConfigError(f"invalid configuration: {describe_config_error(error, os.environ)}") from None
    except ConfigSourceError as error:
        raise ConfigError(str(error)) from None


def require(secret: SecretStr | None, field: str) -> str:
    if secret is None:
        raise ConfigError(f"{field} is required for this command: set {env_name(field)}")
    return secret.get_secret_value()


def _queues(config: RuntimeConfig) -> Queues:
    return Queues(
        require(config.redis.url, "redis.url"),
        prefix=config.redis.queue_prefix,
        socket_timeout_s=config.redis.socket_timeout_s,
    )


# -- commands ------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        config = load_config(worker={"kind": args.pool})
    except ConfigError as error:
        # A worker's output is read by a log pipeline: its last words are one line of the log schema,
        # in the format asked for if that much of the configuration is readable.
        asked = os.environ.get(env_name("observability.log_format"))
        configure_logging(fmt="text" if asked == "text" else "json")
        logging.getLogger("falachefe_runtime.worker").error("cannot start: %s", error, extra={"pool": args.pool})
        return EXIT_CONFIG
    from falachefe_runtime.worker.app import run_worker  # noqa: PLC0415 - heavy (asyncpg, crewai): only here

    return run_worker(config)


#: The kubelet keeps at most this much of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config()
    dsn = require(config.database.dsn, "database.dsn")
    from falachefe_runtime.db.migrate import SCHEMA_VERSION, migrate  # noqa: PLC0415 - asyncpg only when migrating

    try:
        report = asyncio.run(migrate(dsn, application_name=f"{config.database.application_name}-migrate"))
    except Exception as error:
        failure = {"schema_version": SCHEMA_VERSION, "error": redact_text(f"{type(error).__name__}: {error}", dsn)}
        _last_words(args.termination_log, failure)
        raise
    summary = {
        "schema_version": SCHEMA_VERSION,
        "applied": report.applied,
        "created_indexes": report.created_indexes,
        "rebuilt_indexes": report.rebuilt_indexes,
    }
    _last_words(args.termination_log, summary)
    out.write(json.dumps(summary) + "\n")
    return 0


def _last_words(path: str | None, message: dict[str, object]) -> None:
    """Write ``message`` (JSON) to ``path``, the container's termination message file, if there is one.

    The kubelet keeps that file's content in the pod's status, which is how
    the operator learns what a migration Job did, or why it failed, without
    reading logs.
    """
    if not path:
        return
    text = json.dumps(message)
    if len(text) > TERMINATION_MESSAGE_LIMIT:
        text = json.dumps({**message, "error": str(message.get("error", ""))[: TERMINATION_MESSAGE_LIMIT // 2]})
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as log_file:
        log_file.write(text[:TERMINATION_MESSAGE_LIMIT])


async def _queue_counts(config: RuntimeConfig, names: Sequence[str]) -> dict[str, dict[str, int]]:
    queues = _queues(config)
    try:
        return {name: await queues.counts(name) for name in names}
    finally:
        await queues.close()


def cmd_queues(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config()
    counts = asyncio.run(_queue_counts(config, args.queue or ALL_QUEUES))
    if args.json:
        out.write(json.dumps(counts, indent=2) + "\n")
        return 0
    width = max(len(name) for name in counts)
    out.write(f"{'QUEUE':<{width}}  " + "  ".join(f"{state.upper():>11}" for state in COUNT_STATES) + "\n")
    for name, by_state in counts.items():
        out.write(f"{name:<{width}}  " + "  ".join(f"{by_state[state]:>11}" for state in COUNT_STATES) + "\n")
    return 0


def _job_summary(job: FailedJob) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "failedReason": job.failed_reason,
        "attemptsMade": job.attempts_made,
        "finishedOn": datetime.fromtimestamp(job.finished_on / 1000, UTC).isoformat() if job.finished_on else None,
    }
    if job.malformed:
        summary["malformed"] = dict(job.malformed)
    return summary


def _selection(args: argparse.Namespace) -> Selection:
    older_than = args.older_than
    return Selection(
        ids=args.id or (),
        name=args.name,
        reason_contains=args.reason,
        finished_before_ms=None if older_than is None else int((time.time() - older_than) * 1000),
    )


async def _failed(config: RuntimeConfig, queue: str, limit: int, selection: Selection) -> list[dict[str, Any]]:
    queues = _queues(config)
    try:
        failed = queues.failed(queue)
        if selection == Selection():
            return [_job_summary(job) for job in await failed.newest(limit)]
        shown: list[dict[str, Any]] = []
        jobs = failed.batches() if not selection.ids else _by_id(failed, selection.ids)
        async for batch in jobs:
            shown.extend(_job_summary(job) for job in batch if selection.matches(job))
            if len(shown) >= limit:
                break
        return shown[:limit]
    finally:
        await queues.close()


async def _by_id(failed: FailedSet, ids: Sequence[str]) -> AsyncIterator[list[FailedJob]]:
    yield [job for job in await failed.read(list(dict.fromkeys(ids))) if job is not None]


def cmd_failed(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config()
    out.write(json.dumps(asyncio.run(_failed(config, args.queue, args.limit, _selection(args))), indent=2) + "\n")
    return 0


async def _retry(config: RuntimeConfig, queue: str, selection: Selection, progress: TextIO) -> RetryReport:
    def report_progress(examined: int, total: int, report: RetryReport) -> None:
        if total > BATCH:
            progress.write(f"retry {queue}: {examined}/{total} examined, {len(report.retried)} retried\n")
            progress.flush()

    queues = _queues(config)
    try:
        return await retry_selected(queues.failed(queue), selection, report_progress)
    finally:
        await queues.close()


def cmd_retry(args: argparse.Namespace, out: TextIO) -> int:
    selection = _selection(args)
    if args.all == (selection != Selection()):
        raise ConfigError("say which failed jobs to retry: --id, --name, --reason, --older-than, or --all")
    config = load_config()
    report = asyncio.run(_retry(config, args.queue, selection, sys.stderr))
    result = {
        "queue": args.queue,
        "retried": len(report.retried),
        "ids": report.retried,
        "refused": report.refused,
        "notFailed": report.not_failed,
    }
    out.write(json.dumps(result, indent=2) + "\n")
    return 0 if not (report.refused or report.not_failed) else EXIT_NOT_ALL_RETRIED


def duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d`` in seconds (argparse's type for --older-than)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number and a unit (s, m, h or d), such as 2h; got {text!r}")
    return int(number) * units[unit]


async def _enqueue_message(
    config: RuntimeConfig, job: ProcessMessage, priority: int | None, delay_ms: int | None
) -> str:
    queues = _queues(config)
    try:
        return await queues.enqueue(
            WHATSAPP_QUEUE,
            PROCESS_MESSAGE,
            job.model_dump(mode="json", by_alias=True),
            priority=priority,
            delay_ms=delay_ms,
        )
    finally:
        await queues.close()


def cmd_enqueue_message(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config()
    try:
        message = InboundMessage(
            phone_number=args.phone,
            company_id=args.company,
            text=args.text,
            provider_message_id=args.provider_message_id or f"cli-{uuid.uuid4().hex}",
            timestamp=datetime.now(UTC),
        )
    except ValidationError as error:
        raise ConfigError(f"invalid message: {describe_validation_error(error)}") from None
    job_id = asyncio.run(_enqueue_message(config, ProcessMessage(message_data=message), args.priority, args.delay_ms))
    out.write(
        json.dumps({"queue": WHATSAPP_QUEUE, "jobId": job_id, "providerMessageId": message.provider_message_id}) + "\n"
    )
    return 0


# -- parsing -------------------------------------------------------------------


def settings_help() -> str:
    """The configuration a command reads: the file, then every variable with its default."""
    fields = setting_fields()
    # A section's default may differ from its class's (the replica pool is smaller): read the defaults whole.
    defaults = RuntimeConfig.model_construct().model_dump(mode="json")
    width = max(len(env_name(dotted)) for dotted in fields)
    lines = [
        "configuration (a variable wins over the config file, which wins over the defaults):",
        f"  {CONFIG_FILE_ENV:<{width}}  a YAML file with the sections below (database:, redis:, ...)",
    ]
    for dotted, field in fields.items():
        if is_secret(field):
            note = f"secret; or {env_name(dotted)}{FILE_SUFFIX}=<file holding it>"
        else:
            default = functools.reduce(lambda section, key: section[key], dotted.split("."), defaults)
            note = "unset" if default is None else f"default {default}"
        lines.append(f"  {env_name(dotted):<{width}}  {note}")
    return "\n".join(lines)


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Filters of the failed set; given together, a job must match them all."""
    parser.add_argument("--id", action="append", help="this job (repeatable)")
    parser.add_argument("--name", help="jobs of this name (process-message, ...)")
    parser.add_argument("--reason", help="jobs whose failedReason contains this text")
    parser.add_argument(
        "--older-than", type=duration, metavar="AGE", help="jobs that failed more than AGE ago (2h, 7d)"
    )


def build_parser() -> argparse.ArgumentParser:
    epilog = settings_help()

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=summary, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )

    parser = argparse.ArgumentParser(
        prog="falachefe-runtime",
        description=__doc__.split("\n\n")[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    worker = command("worker", "run a worker pool until SIGTERM")
    worker.add_argument("--pool", required=True, choices=[kind.value for kind in WorkerKind])

    migrate = command("migrate", "apply the database migrations (safe to run twice, and concurrently)")
    migrate.add_argument(
        "--termination-log",
        metavar="PATH",
        help="also write the outcome as JSON there (in a pod: /dev/termination-log, read back by the operator)",
    )

    queues = command("queues", "job counts per queue and state")
    queues.add_argument("--queue", action="append", help="only this queue (repeatable); default: all")
    queues.add_argument("--json", action="store_true", help="machine-readable output")

    failed = command("failed", "the latest failed jobs of a queue, with their reasons (malformed ones too)")
    failed.add_argument("--queue", required=True)
    failed.add_argument("--limit", type=int, default=20)
    _selection_arguments(failed)

    retry = command(
        "retry",
        "retry failed jobs of a queue with their attempts afresh: some by id, those a filter picks, or --all "
        f"(exit {EXIT_NOT_ALL_RETRIED} when some were malformed or not failed)",
    )
    retry.add_argument("--queue", required=True)
    retry.add_argument("--all", action="store_true", help="every failed job of the queue")
    _selection_arguments(retry)

    enqueue = command("enqueue-message", "put an inbound WhatsApp message on whatsapp-processing")
    enqueue.add_argument("--company", required=True, help="company id (UUID)")
    enqueue.add_argument("--phone", required=True, help="sender's phone number, E.164 (+5511...)")
    enqueue.add_argument("--text", required=True)
    enqueue.add_argument("--provider-message-id", help="default: a fresh unique id")
    enqueue.add_argument("--priority", type=int, help="1 is the highest")
    enqueue.add_argument("--delay-ms", type=int)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "worker":
            return cmd_worker(args)
        handlers = {
            "migrate": cmd_migrate,
            "queues": cmd_queues,
            "failed": cmd_failed,
            "retry": cmd_retry,
            "enqueue-message": cmd_enqueue_message,
        }
        return handlers[args.command](args, out)
    except (ConfigError, ValueError) as error:
        sys.stderr.write(f"falachefe-runtime {args.command}: {error}\n")
        return EXIT_CONFIG
