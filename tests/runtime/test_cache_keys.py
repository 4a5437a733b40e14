"""Cache key layout and invalidation messages (pure, no server)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falachefe_runtime.cache.keys import (
    CacheKind,
    KeySpace,
    Scope,
    ScopeKind,
    invalidation_prefix,
    kind_ttl_s,
    parse_invalidation,
)
from falachefe_runtime.config import CacheTTLs

SPACE = KeySpace("falachefe:cache")
IDS = st.from_regex(r"[A-Za-z0-9_.@+-]{1,128}", fullmatch=True)


def test_an_entry_key_carries_every_scope_id_with_its_generation() -> None:
    company, user = uuid.uuid4(), uuid.uuid4()
    members = Scope(company_id=company, user_id=user).members()
    key = SPACE.entry(CacheKind.SESSION, "session", members, (3, 7))
    assert key == f"falachefe:cache:session:c={company}#3,u={user}#7:session"
    assert SPACE.entry(CacheKind.SESSION, "session", members, (4, 7)) != key
    assert SPACE.entry(CacheKind.SESSION, "k", (), ()) == "falachefe:cache:session:-:k"


def test_long_keys_are_hashed() -> None:
    key = SPACE.entry(CacheKind.CREW_RESPONSE, "m" * 1_000, (), ())
    assert len(key) < 120
    assert ":sha256=" in key


@given(IDS, st.sampled_from(list(ScopeKind)), st.integers(min_value=0, max_value=2**62))
def test_invalidation_messages_round_trip(ident: str, kind: ScopeKind, generation: int) -> None:
    member = (kind, ident)
    assert parse_invalidation(invalidation_prefix(member) + str(generation)) == (member, generation)


@pytest.mark.parametrize("message", ["", "company:x", "tenant:x:1", "company:a,b:1", "company:x:one"])
def test_malformed_invalidation_messages_are_refused(message: str) -> None:
    with pytest.raises(ValueError):
        parse_invalidation(message)


def test_each_kind_has_the_seed_ttl() -> None:
    ttls = CacheTTLs()
    assert {kind: kind_ttl_s(kind, ttls) for kind in CacheKind} == {
        CacheKind.SESSION: 86_400,
        CacheKind.WHATSAPP_AUTH: 300,
        CacheKind.CREW_RESPONSE: 1_800,
        CacheKind.COMPANY_CONFIG: 3_600,
        CacheKind.CREW_CONFIG: 3_600,
    }


@pytest.mark.parametrize("field", ["company_id", "user_id", "crew_id"])
def test_scope_ids_that_could_forge_a_key_name_their_field(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} 'a#1' is not a valid scope id"):
        Scope(**{field: "a#1"}).members()
