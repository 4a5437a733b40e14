"""The workers' Prometheus metrics, in one place so names and labels stay consistent.

Labels are small closed sets (queue names, outcome words, reason codes from
our own code), never ids, phone numbers or error messages, so the series
count stays bounded whatever the traffic.

Queue depth is not here: every replica of a pool would report the same
queue, and a sum over pods would count it once per replica. The operator
exports it, once per pool (``falachefe_operator_pool_queue_jobs``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from falachefe_runtime.observability.build import build_info

BUILD_INFO = Gauge(
    "falachefe_build_info",
    "Always 1; the labels say which version, source revision and Python this worker runs.",
    ["version", "revision", "python"],
)
BUILD_INFO.labels(**build_info()).set(1)

#: Jobs taken off a queue and how they ended: completed, retried (failed with
#: attempts left), failed (no attempts left, or a permanent failure),
#: returned (handed back during a dependency outage, no attempt spent).
JOBS_PROCESSED = Counter(
    "falachefe_jobs_processed_total",
    "Jobs processed by this worker, by queue and outcome.",
    ["queue", "outcome"],
)

JOBS_FAILED = Counter(
    "falachefe_jobs_failed_total",
    "Job attempts that raised, by queue and reason (a reason code or the exception type).",
    ["queue", "reason"],
)

JOB_RETRIES = Counter(
    "falachefe_job_retries_total",
    "Job attempts that failed and were scheduled to run again.",
    ["queue"],
)

JOBS_STALLED = Counter(
    "falachefe_jobs_stalled_total",
    "Jobs this worker's stalled check found abandoned (their worker died) and put back in the queue.",
    ["queue"],
)

JOB_DURATION = Histogram(
    "falachefe_job_duration_seconds",
    "Wall time of one job attempt in this worker.",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

JOB_QUEUE_WAIT = Histogram(
    "falachefe_job_queue_wait_seconds",
    "Time a job waited in its queue, from when it could run (added, or its delay over) to when a worker took it."
    " First attempts only: a retry waits out its backoff on purpose.",
    ["queue"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

JOBS_IN_FLIGHT = Gauge(
    "falachefe_jobs_in_flight",
    "Jobs this worker is processing right now.",
    ["queue"],
)

CREW_KICKOFF_DURATION = Histogram(
    "falachefe_crew_kickoff_duration_seconds",
    "Wall time of one CrewAI kickoff (LLM calls included).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)

CREW_RESPONSES = Counter(
    "falachefe_crew_responses_total",
    "Crew answers, by where they came from: the response cache or a kickoff.",
    ["source"],
)

AUTH_DECISIONS = Counter(
    "falachefe_auth_decisions_total",
    "Authentication decisions, by event (message, link_code_request, link_code_verify) and result.",
    ["event", "result"],
)

ADMIN_TASK_ITEMS = Counter(
    "falachefe_admin_task_items_total",
    "Rows or keys an admin task acted on, by task.",
    ["task"],
)

DEPENDENCY_UP = Gauge(
    "falachefe_dependency_up",
    "1 while this worker's dependency answers, 0 during an outage of it that the worker detected"
    " (the worker takes no jobs meanwhile).",
    ["dependency"],
)

DEPENDENCY_OUTAGES = Counter(
    "falachefe_dependency_outages_total",
    "Outages of a dependency that this worker detected (a job failed and the dependency did not answer).",
    ["dependency"],
)

JOBS_RETURNED = Counter(
    "falachefe_jobs_returned_total",
    "Jobs handed back to their queue without spending an attempt, because a dependency was down.",
    ["queue"],
)

#: The queue's Redis keeps its data across a restart through AOF, RDB snapshots,
#: neither, or this worker may not ask (CONFIG refused): 1 for the mode seen, 0 for the others.
REDIS_PERSISTENCE = Gauge(
    "falachefe_redis_persistence",
    "How the queue's Redis persists its data, as seen at this worker's start: 1 for the mode"
    " (aof, rdb, none, unknown), 0 for the others.",
    ["mode"],
)
