"""A Redis password never reaches the Falachefe's status, whatever it holds and however it was pasted.

The ScalingActive condition is readable by anyone who may ``get
falachefes``: its message is built from what the queue reader saw, which
used to quote pieces of a password holding an unescaped ``/``, ``#`` or
``?`` (redis-py took them for a host or a port).
"""

from __future__ import annotations

import json
import re

from test_status_summary import T0, by_type, deployment, pools

from falachefe_devstack.redis import RedisServer
from falachefe_operator.scaling.observation import MetricUnavailable
from falachefe_operator.scaling.queue import QueueReader, QueueRef
from falachefe_operator.status import Observation, PoolObservation, ScalingReport, summarize

#: Passwords pasted unescaped; their pieces are upper-case letter pairs that no message holds.
PASSWORDS = ("Zq/Wv", "Kx#Wz?Jb", "QyXv?Pk", "Zq/Wv#Xj?Pk@Jm%Rt:Yb", "Yb@Kx:Qy")


def pieces(password: str) -> list[str]:
    return [piece for piece in re.split(r"[/#?@%:]", password) if piece]


def scaling_status(message: str) -> dict:
    down = ScalingReport(None, None, None, metrics_available=False, message=message)
    observation = Observation(
        generation=1, applied_generation=1, pools=pools(auth=PoolObservation(True, deployment(1, 1), down))
    )
    return summarize(observation, previous={}, now=T0)


async def test_the_scaling_active_message_holds_no_piece_of_a_redis_password(redis_server: RedisServer) -> None:
    reader = QueueReader(timeout_seconds=1)
    try:
        for password in PASSWORDS:
            url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
            seen = await reader.read(QueueRef("whatsapp-processing", url))
            breaks_parsers = any(char in password for char in "/#?")
            if not breaks_parsers and not isinstance(seen, MetricUnavailable):
                continue  # a password-less test Redis accepts a URL that parses
            assert isinstance(seen, MetricUnavailable), password
            status = scaling_status(str(seen))
            scaling = by_type(status)["ScalingActive"]
            assert scaling["reason"] == "MetricsUnavailable"
            text = json.dumps(status)
            assert not [piece for piece in pieces(password) if piece in text], (password, scaling["message"])
            assert ("percent-encode" in scaling["message"]) == breaks_parsers
    finally:
        await reader.aclose()


def test_a_url_quoted_in_any_condition_message_is_masked() -> None:
    for password in PASSWORDS:
        url = f"redis://app:{password}@redis.shop.svc:6379/0"
        status = scaling_status(f"queue unavailable: Error connecting to {url}: refused")
        message = by_type(status)["ScalingActive"]["message"]
        assert "redis://app:***@redis.shop.svc:6379/0" in message
        assert not [piece for piece in pieces(password) if piece in json.dumps(status)]
