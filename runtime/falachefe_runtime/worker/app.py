"""A worker process from start to exit: ``falachefe-runtime worker --pool <kind>``.

Start-up serves health and metrics first (alive at once, ready once the
worker consumes), then opens PostgreSQL, the cache and Redis, builds the
pool's handlers and starts consuming. SIGTERM (what the
kubelet sends) or SIGINT starts a graceful stop: ``/readyz`` turns 503, the
worker takes no new job, in-flight jobs get ``worker.shutdown_grace_s`` to
finish, and the process exits 0. If the grace period runs out the
remaining jobs go back to the queue at once, for another worker, and the
exit code is 1. A worker loop that dies on its own also exits 1, so
the kubelet restarts the container.

While a dependency (PostgreSQL, Redis) is down the worker takes no jobs,
hands back the ones that failed for it without spending an attempt, reports
not ready, and resumes by itself once it answers (``outages``). At start it
checks that the queue's Redis persists (``persistence``).

A worker that cannot start says why in one log line naming the setting and
its variable (``cannot start: cannot open database.dsn: ...``), not with a
traceback: exit 2 for settings it lacks, 1 for a server it cannot reach
(the kubelet retries that with back-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
import uvloop
from redis.utils import HIREDIS_AVAILABLE

from falachefe_runtime.cache import Cache
from falachefe_runtime.config import (
    LOCK_HOLDER_SEPARATOR,
    RuntimeConfig,
    WorkerKind,
    env_name,
    unrecognised_variables,
)
from falachefe_runtime.db import Database, DatabaseStartError
from falachefe_runtime.db.migrate import describe_missing, missing_migrations
from falachefe_runtime.observability.health import HealthServer
from falachefe_runtime.observability.logging import configure_logging, log_context
from falachefe_runtime.queues import Queues
from falachefe_runtime.redact import redact_text
from falachefe_runtime.redis_wire import use_fast_wire
from falachefe_runtime.worker.outages import DependencyGuard
from falachefe_runtime.worker.persistence import check_redis_persistence
from falachefe_runtime.worker.pools import build_routes
from falachefe_runtime.worker.runner import QueueWorker

log = logging.getLogger(__name__)

#: Exit codes of a worker that could not start: a setting it lacks, a server it cannot reach.
EXIT_MISSING_SETTINGS = 2
EXIT_UNREACHABLE = 1
#: The database's schema lacks a migration this image needs: the migration has not run yet.
EXIT_SCHEMA_BEHIND = 3


class StartupError(Exception):
    """The worker cannot start; the message says why and names ``settings``, never their values."""

    def __init__(self, message: str, settings: list[str], exit_code: int) -> None:
        super().__init__(message)
        self.settings = settings
        self.exit_code = exit_code


@dataclass
class Resources:
    """What a worker opened, closed in reverse order on the way out."""

    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:  # keep closing the rest
                log.exception("error while closing a resource")


def run_worker(config: RuntimeConfig) -> int:
    configure_logging(config.observability.log_level, config.observability.log_format)
    for variable in unrecognised_variables(os.environ):
        log.warning("ignoring an environment variable that is not a runtime setting", extra={"variable": variable})
    try:
        # uvloop (libuv) spends less CPU per Redis and PostgreSQL round trip than asyncio's own loop.
        code = uvloop.run(serve(config))
    except StartupError as error:  # logged by serve, in its context
        return error.exit_code
    if code != 0:
        # Jobs were abandoned mid-way: their threads (a CrewAI kickoff
        # cannot be interrupted) would hold the interpreter's exit until
        # they end. Their jobs belong to another worker now; leave at once.
        logging.shutdown()
        os._exit(code)
    return code


def missing_settings(config: RuntimeConfig) -> list[str]:
    """The settings this pool needs that are not set (secrets arrive by environment)."""
    needed = {"database.dsn": config.database.dsn, "redis.url": config.redis.url}
    if config.worker.kind is WorkerKind.AUTH:
        needed["auth.otp_secret"] = config.auth.otp_secret
    if config.worker.kind is WorkerKind.CREW:
        needed["llm.api_key"] = config.llm.api_key
    return [name for name, value in needed.items() if value is None]


async def serve(config: RuntimeConfig, *, stop: asyncio.Event | None = None) -> int:
    """Run the pool until ``stop`` is set (by SIGTERM/SIGINT when not given); the exit code."""
    observability = config.observability
    with log_context(
        namespace=observability.resource_namespace,
        name=observability.resource_name,
        pool=config.worker.kind.value,
        queue=config.worker.queue_name,
    ):
        try:
            missing = missing_settings(config)
            if missing:
                to_set = ", ".join(env_name(name) for name in missing)
                raise StartupError(
                    f"the {config.worker.kind.value} pool needs {', '.join(missing)}: set {to_set}",
                    missing,
                    EXIT_MISSING_SETTINGS,
                )
            return await _serve(config, stop)
        except StartupError as error:
            variables = [env_name(setting) for setting in error.settings]
            log.error("cannot start: %s", error, extra={"config": error.settings, "variables": variables})
            raise


async def _serve(config: RuntimeConfig, stop: asyncio.Event | None) -> int:
    assert config.redis.url is not None
    redis_url = config.redis.url.get_secret_value()
    kind = config.worker.kind
    queue = config.worker.queue_name
    stop = stop or _stop_on_signals()
    resources = Resources()
    db = Database(config.database)
    client = redis.Redis.from_url(redis_url, socket_timeout=config.redis.socket_timeout_s)
    use_fast_wire(client)
    resources.closers.append(client.aclose)
    consumer: list[QueueWorker] = []  # the worker, once it consumes

    async def redis_answers() -> bool:
        return bool(await client.ping())

    async def consuming() -> bool:
        return bool(consumer) and consumer[0].running

    # What every job may need: an outage of one pauses the worker and spends no attempt.
    guard = DependencyGuard({"database": db.probe, "redis": client.ping})

    # Up first, so probes get answers while the rest starts (CrewAI takes
    # seconds to import): alive from now on, ready once the worker consumes.
    health = HealthServer(
        readiness={"database": db.ping, "redis": redis_answers, "worker": consuming},
        alive=lambda: not consumer or consumer[0].running,
        outage=guard.describe,
        health_port=config.observability.health_port,
        metrics_port=config.observability.metrics_port,
        host=config.observability.listen_address,
    )
    try:
        await health.start()
        resources.closers.append(health.stop)
        # The ports bound (port 0 in the settings asks for any free one).
        log.info("health and metrics listening", extra={f"{role}_port": port for role, port in health.bound.items()})
        try:
            await db.start()
        except DatabaseStartError as error:
            raise StartupError(str(error), [error.setting], EXIT_UNREACHABLE) from error
        resources.closers.append(db.close)
        # Never serve on a schema older than this code: the rollout waits for the migration Job.
        missing = await missing_migrations(db)
        if missing:
            raise StartupError(describe_missing(missing), ["database.dsn"], EXIT_SCHEMA_BEHIND)
        await _check_redis(client)
        cache = Cache.from_config(config)
        await cache.start()
        resources.closers.append(cache.close)
        queues = Queues(redis_url, prefix=config.redis.queue_prefix, socket_timeout_s=config.redis.socket_timeout_s)
        resources.closers.append(queues.close)
        pool = await build_routes(config, db=db, cache=cache, client=client, queues=queues)
        resources.closers.append(pool.close)

        worker = QueueWorker(
            queue,
            pool.routes,
            redis_url=redis_url,
            prefix=config.redis.queue_prefix,
            socket_timeout_s=config.redis.socket_timeout_s,
            concurrency=config.worker.effective_concurrency,
            settings=config.queues,
            name=kind.value,
            guard=guard,
            job_timeout_s=config.worker.effective_job_timeout_s,
            holder=_lock_holder(config.worker.pod_name),
        )
        resources.closers.append(guard.close)
        await worker.start()
        consumer.append(worker)
        log.info(
            "worker started",
            extra={
                "concurrency": config.worker.effective_concurrency,
                "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
                "redis_parser": "hiredis" if HIREDIS_AVAILABLE else "python",
            },
        )
        exit_code = await _until_stopped(stop, worker)
        health.shutting_down = True
        log.info("stopping: no new jobs; waiting for in-flight ones", extra={"in_flight": worker.in_flight})
        finished = await worker.stop(config.worker.shutdown_grace_s)
        log.info("worker stopped", extra={"all_jobs_finished": finished})
        return exit_code if finished else 1
    finally:
        await resources.close()


async def _until_stopped(stop: asyncio.Event, worker: QueueWorker) -> int:
    """0 when asked to stop, 1 when the worker's loop died by itself."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        if not worker.running and not stop.is_set():
            log.error("the queue worker loop stopped unexpectedly; exiting so the container restarts")
            return 1
    return 0


async def _check_redis(client: redis.Redis) -> None:
    """Redis answers (the queues, the cache and the rate limits all live there), and whether it persists."""
    try:
        await client.ping()
    except (redis.RedisError, OSError) as error:
        message = f"cannot reach redis.url: {redact_text(_redis_trouble(error))}"
        raise StartupError(message, ["redis.url"], EXIT_UNREACHABLE) from error
    # Queued jobs live only there: say so when a restart of it would lose them.
    await check_redis_persistence(client)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _redis_trouble(error: BaseException) -> str:
    """A Redis connection failure in words that hold no part of the URL (redis-py names host and port only)."""
    if isinstance(error, redis.AuthenticationError | redis.ResponseError):
        return type(error).__name__
    return f"{type(error).__name__}: {error}"


def _lock_holder(pod_name: str | None) -> str | None:
    """The pod name for the worker's lock tokens: set, or the host name (the pod's name in Kubernetes)."""
    if pod_name:
        return pod_name
    host = socket.gethostname()
    return host if host and ":" not in host and LOCK_HOLDER_SEPARATOR not in host else None
