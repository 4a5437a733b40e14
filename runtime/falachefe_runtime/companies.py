"""A company as the workers need it: does it exist, is it active, what is it called.

Read through the cache (``company_config``, one hour by the seed, dropped
when the company is invalidated): every job looks its company up first.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from falachefe_runtime.cache.keys import CacheKind, Scope
from falachefe_runtime.db.database import Database
from falachefe_runtime.interfaces import ReadThroughCache
from falachefe_runtime.worker.routing import PermanentJobError


class Company(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    name: str
    is_active: bool


def _company(cached: dict[str, Any]) -> Company | None:
    """A cached company entry as the (frozen) model: parsed once per L1 entry."""
    return Company.model_validate(cached["company"]) if cached["company"] else None


class Companies:
    def __init__(self, db: Database, cache: ReadThroughCache) -> None:
        self._db = db
        self._cache = cache

    async def active(self, company_id: UUID) -> Company:
        """The company, or a permanent job failure: a job for an unknown company can never succeed."""

        async def load() -> dict[str, Any]:
            row = await self._db.fetchrow(
                "SELECT id, name, is_active FROM companies WHERE id = $1",
                company_id,
                name="companies.by_id",
                readonly=True,
            )
            return {"company": Company(**dict(row)).model_dump(mode="json") if row else None}

        company: Company | None = await self._cache.get_or_load(
            CacheKind.COMPANY_CONFIG, "company", load, scope=Scope(company_id=company_id), parse=_company
        )
        if company is None or not company.is_active:
            raise PermanentJobError(
                "unknown_company", f"company {company_id} does not exist or is not active; check the job's companyId"
            )
        return company
