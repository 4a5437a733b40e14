"""A company's crew as data: what the database holds and the cache keeps.

Plain pydantic models, JSON in and out, so a definition loaded once from
PostgreSQL can be shared through the cache by every crew worker; the
CrewAI objects are built from it per kickoff (they hold run state and are
not safe to share between threads).
"""

from __future__ import annotations

import re
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The inputs a kickoff provides: the user's message and the company's name.
#: Templates (roles, goals, task descriptions) may use them as ``{message}``
#: and ``{company}``; CrewAI fails a kickoff on any other placeholder.
MESSAGE_INPUT = "message"
COMPANY_INPUT = "company"
KICKOFF_INPUTS = frozenset({MESSAGE_INPUT, COMPANY_INPUT})
# CrewAI's own placeholder pattern (crewai.utilities.string_utils).
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)}")


def unknown_placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template)) - KICKOFF_INPUTS


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgentSpec(_Model):
    id: UUID
    role: str
    goal: str
    backstory: str


class TaskSpec(_Model):
    id: UUID
    agent_id: UUID | None
    description: str
    expected_output: str


class CrewDefinition(_Model):
    id: UUID
    company_id: UUID
    name: str
    process: Literal["sequential", "hierarchical"]
    agents: tuple[AgentSpec, ...] = Field(min_length=1)
    tasks: tuple[TaskSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> CrewDefinition:
        templates = [(f"agent {a.id}", t) for a in self.agents for t in (a.role, a.goal, a.backstory)]
        templates += [(f"task {t.id}", text) for t in self.tasks for text in (t.description, t.expected_output)]
        for owner, text in templates:
            unknown = unknown_placeholders(text)
            if unknown:
                raise ValueError(
                    f"{owner} uses placeholders {sorted(unknown)}; only {{message}} and {{company}} are filled in"
                )
        known = {agent.id for agent in self.agents}
        for task in self.tasks:
            if task.agent_id is not None and task.agent_id not in known:
                raise ValueError(f"task {task.id} is assigned to agent {task.agent_id}, which is not an active agent")
            if task.agent_id is None and self.process == "sequential":
                raise ValueError(f"task {task.id} has no agent; a sequential crew needs one for every task")
        return self
