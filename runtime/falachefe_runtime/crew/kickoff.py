"""Running a CrewAI crew without blocking the worker's event loop.

``Crew.kickoff()`` is synchronous and can take tens of seconds (several LLM
round trips). Run on the event loop it would starve everything else there,
including bullmq's lock renewal, and the job would be declared stalled and
handed to another worker while still running. So kickoffs run in a bounded
thread pool (``worker.crew_threads``); the coroutine awaiting one keeps the
loop free.

CrewAI reads its environment at import time and writes to its storage
directory and the home directory; the worker's root filesystem is read-only,
so both are pointed under the temporary directory before CrewAI is imported
(``load_crewai``), and telemetry is off.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from falachefe_runtime.config import LLMSettings
from falachefe_runtime.crew.definition import COMPANY_INPUT, MESSAGE_INPUT, CrewDefinition
from falachefe_runtime.observability import metrics

#: Appended to the first task when no task mentions the message, so the
#: crew always sees what the user wrote.
MESSAGE_SUFFIX = "\n\nMensagem do cliente: {" + MESSAGE_INPUT + "}"


class EmptyAnswer(RuntimeError):
    """The crew finished without producing any text to send back."""


def prepare_crewai_environment(scratch: Path | None = None) -> None:
    """Telemetry off; CrewAI's files under ``scratch`` (the temp dir) when home is read-only."""
    scratch = scratch or Path(tempfile.gettempdir()) / "falachefe-crewai"
    os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
    os.environ["OTEL_SDK_DISABLED"] = "true"
    os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
    os.environ.setdefault("CREWAI_STORAGE_DIR", str(scratch / "storage"))
    home = os.environ.get("HOME")
    if not home or not os.access(home, os.W_OK):
        os.environ["HOME"] = str(scratch / "home")


def load_crewai() -> ModuleType:
    """Import CrewAI (slow, seconds) after preparing its environment."""
    prepare_crewai_environment()
    import crewai  # noqa: PLC0415 - must follow prepare_crewai_environment()

    return crewai


class CrewKickoff:
    """Builds a CrewAI crew from a definition and runs it in the thread pool."""

    def __init__(self, llm: LLMSettings, *, threads: int) -> None:
        if llm.api_key is None:
            raise ValueError("llm.api_key is required to run crews: set FALACHEFE_LLM__API_KEY from the LLM secret")
        self._llm_settings = llm
        self._crewai = load_crewai()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="crew-kickoff")
        # One LLM client per kickoff thread, built on its first kickoff and kept: building one loads the CA
        # bundle into new TLS contexts (about 150 ms of CPU, measured by bench.crew_overhead), which a
        # client per kickoff paid every time. Per thread, so concurrent kickoffs share no client state.
        self._thread_llm = threading.local()

    async def answer(self, crew: CrewDefinition, *, message: str, company: str) -> str:
        """The crew's final answer to ``message``."""
        loop = asyncio.get_running_loop()
        inputs = {MESSAGE_INPUT: message, COMPANY_INPUT: company}
        with metrics.CREW_KICKOFF_DURATION.time():
            text = await loop.run_in_executor(self._executor, self._kickoff, crew, inputs)
        if not text.strip():
            raise EmptyAnswer(f"crew {crew.id} returned an empty answer")
        return text.strip()

    def close(self) -> None:
        """Release the threads; called once the worker has stopped taking jobs.

        Does not wait: after a clean stop no kickoff is running, and after a
        grace period ran out the ones still running are abandoned (their
        jobs go to another worker) and the process exits without them.
        """
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _kickoff(self, crew: CrewDefinition, inputs: dict[str, str]) -> str:
        crewai = self._crewai
        llm = self._llm()
        agents = {
            spec.id: crewai.Agent(
                role=spec.role,
                goal=spec.goal,
                backstory=spec.backstory,
                llm=llm,
                allow_delegation=False,
                verbose=False,
            )
            for spec in crew.agents
        }
        mentions_message = any("{" + MESSAGE_INPUT + "}" in task.description for task in crew.tasks)
        tasks = []
        for position, spec in enumerate(crew.tasks):
            description = spec.description
            if position == 0 and not mentions_message:
                description += MESSAGE_SUFFIX
            tasks.append(
                crewai.Task(
                    description=description,
                    expected_output=spec.expected_output,
                    agent=agents.get(spec.agent_id) if spec.agent_id else None,
                )
            )
        options: dict[str, Any] = {"memory": False, "cache": False, "verbose": False}
        if crew.process == "hierarchical":
            options["process"] = crewai.Process.hierarchical
            options["manager_llm"] = llm
        else:
            options["process"] = crewai.Process.sequential
        output = crewai.Crew(agents=list(agents.values()), tasks=tasks, **options).kickoff(inputs=inputs)
        return str(output.raw or "")

    def _llm(self) -> Any:
        llm = getattr(self._thread_llm, "llm", None)
        if llm is None:
            settings = self._llm_settings
            assert settings.api_key is not None  # checked in __init__
            llm = self._thread_llm.llm = self._crewai.LLM(
                model=settings.model,
                provider="openai",
                base_url=settings.base_url,
                api_key=settings.api_key.get_secret_value(),
                timeout=settings.timeout_s,
            )
        return llm
