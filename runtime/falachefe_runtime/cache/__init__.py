"""The runtime's two-layer cache: in-process L1 over Redis L2, invalidated in every process."""

from __future__ import annotations

from .cache import Cache
from .keys import CacheKind, Scope, ScopeKind

__all__ = ["Cache", "CacheKind", "Scope", "ScopeKind"]
