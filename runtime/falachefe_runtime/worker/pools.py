"""What each worker pool consumes: its job names, their payloads and handlers.

The crew pool imports CrewAI (seconds of start-up, hundreds of MB), so it
is only imported when the crew pool starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as redis

from falachefe_runtime.admin.tasks import SCHEDULES, AdminTasks
from falachefe_runtime.auth.rate_limit import FixedWindowLimiter
from falachefe_runtime.auth.service import AuthService
from falachefe_runtime.auth.store import AuthStore
from falachefe_runtime.cache import Cache
from falachefe_runtime.companies import Companies
from falachefe_runtime.config import RuntimeConfig, WorkerKind
from falachefe_runtime.db import Database
from falachefe_runtime.payloads import (
    AGGREGATE_METRICS,
    CLEAN_CACHE,
    EXPIRE_SESSIONS,
    PROCESS_CREW,
    PROCESS_MESSAGE,
    REQUEST_LINK_CODE,
    VERIFY_LINK_CODE,
    AdminTask,
    LinkCodeRequest,
    LinkCodeVerify,
    ProcessCrew,
    ProcessMessage,
)
from falachefe_runtime.queues import ADMIN_QUEUE, Queues, job_options
from falachefe_runtime.worker.routing import Route, Routes

#: Redis key prefix of the auth worker's rate limits.
RATE_LIMIT_PREFIX = "falachefe:auth"


async def _nothing() -> None:
    return None


@dataclass
class Pool:
    routes: Routes
    close: Callable[[], Awaitable[None]] = _nothing


async def build_routes(
    config: RuntimeConfig, *, db: Database, cache: Cache, client: redis.Redis, queues: Queues
) -> Pool:
    kind = config.worker.kind
    companies = Companies(db, cache)
    if kind is WorkerKind.AUTH:
        auth = AuthService(
            store=AuthStore(db),
            companies=companies,
            cache=cache,
            queues=queues,
            limiter=FixedWindowLimiter(
                client, limit=config.auth.otp_requests_per_window, window_s=config.auth.otp_request_window_s
            ),
            settings=config.auth,
            rate_limit_prefix=RATE_LIMIT_PREFIX,
        )
        return Pool(
            {
                PROCESS_MESSAGE: Route(ProcessMessage, auth.handle_message),
                REQUEST_LINK_CODE: Route(LinkCodeRequest, auth.request_link_code),
                VERIFY_LINK_CODE: Route(LinkCodeVerify, auth.verify_link_code),
            }
        )
    if kind is WorkerKind.CREW:
        from falachefe_runtime.crew.kickoff import CrewKickoff  # noqa: PLC0415 - CrewAI only in crew workers
        from falachefe_runtime.crew.service import CrewService  # noqa: PLC0415
        from falachefe_runtime.crew.store import CrewStore  # noqa: PLC0415

        # Importing CrewAI takes seconds: off the event loop, so health probes are answered meanwhile.
        kickoff = await asyncio.to_thread(CrewKickoff, config.llm, threads=config.worker.crew_threads)
        crew = CrewService(store=CrewStore(db), companies=companies, cache=cache, queues=queues, kickoff=kickoff)

        async def close() -> None:
            kickoff.close()

        return Pool({PROCESS_CREW: Route(ProcessCrew, crew.handle)}, close=close)

    admin = AdminTasks(db, client, cache_prefix=config.redis.cache_prefix)
    await register_schedules(queues)
    return Pool(
        {
            EXPIRE_SESSIONS: Route(AdminTask, admin.expire_sessions),
            CLEAN_CACHE: Route(AdminTask, admin.clean_cache),
            AGGREGATE_METRICS: Route(AdminTask, admin.aggregate_metrics),
        }
    )


async def register_schedules(queues: Queues) -> None:
    """One BullMQ job scheduler per admin task, under a fixed id: many replicas upsert the same one."""
    admin_queue = queues.queue(ADMIN_QUEUE)
    for name, every_ms in SCHEDULES.items():
        await admin_queue.upsertJobScheduler(name, {"every": every_ms}, name, {}, job_options(ADMIN_QUEUE))
