"""Redis commands onto the wire with less Python per command.

redis-py's asyncio connections pack every command in Python (hiredis
parses replies but packs only for the synchronous client), and with a
``socket_timeout`` they wrap every write in ``asyncio.wait_for``, which
creates a task per command even though a write that fits in the
transport's buffer never waits. At a few thousand jobs a second those two
are a large share of a worker's CPU (bench/README.md, "Where the cached
auth job's CPU goes").

``FastWire`` changes only how a command is sent, never what:

- ``pack_command`` asks ``hiredis.pack_command`` for the same bytes (a test
  holds the two to each other); anything hiredis does not take (a
  ``memoryview``, a ``bool``, an encoding other than strict UTF-8) goes to
  redis-py's own packer, which also raises its ``DataError`` for values it
  refuses.
- ``send_packed_command`` writes directly when the connection is open, no
  health check is due, and the command fits under the transport's
  high-water mark, so ``drain()`` returns at once and the timeout could
  never fire. Otherwise (connecting, a large command, a peer that stopped
  reading) it is redis-py's own send, with its timeout.

Reads keep their timeout: a server that stops answering is still noticed.

``use_fast_wire(client)`` gives a client's pool these connections; it must
run before the client's first command (bullmq's clients connect lazily).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError


class FastWire(AbstractConnection):
    """Mixin for a redis-py asyncio connection class; see the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        encoder = self.encoder
        self._hiredis_packs = encoder.encoding.lower().replace("_", "-") in ("utf-8", "utf8") and (
            encoder.encoding_errors == "strict"
        )

    def pack_command(self, *args: Any) -> list[bytes]:
        if self._hiredis_packs and args:
            first = args[0]
            if isinstance(first, str):
                words = first.encode().split()
            elif isinstance(first, bytes):
                words = first.split()
            else:
                return super().pack_command(*args)
            try:
                return [hiredis.pack_command((*words, *args[1:]))]
            except TypeError:
                pass  # a type hiredis does not pack: redis-py's packer decides
        return super().pack_command(*args)

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        writer = self._writer
        if (
            writer is None
            or self._reader is None
            or not isinstance(command, list)
            or (check_health and self.health_check_interval)
        ):
            await super().send_packed_command(command, check_health)
            return
        transport = writer.transport
        size = sum(map(len, command))
        if transport.is_closing() or transport.get_write_buffer_size() + size > transport.get_write_buffer_limits()[1]:
            await super().send_packed_command(command, check_health)
            return
        try:
            writer.writelines(command)
            # Under the high-water mark the protocol is not paused: this does not wait.
            await writer.drain()
        except OSError as error:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {error}") from error
        except BaseException:
            await self.disconnect(nowait=True)
            raise


_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def fast_connection_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (TCP, TLS or Unix socket) with ``FastWire`` in front of it; one class per base."""
    if issubclass(base, FastWire):
        return base
    if base not in _FAST:
        _FAST[base] = type(f"Fast{base.__name__}", (FastWire, base), {})
    return _FAST[base]


def use_fast_wire(client: Redis | None) -> None:
    """Have ``client``'s pool make ``FastWire`` connections (before its first command)."""
    if client is None:
        return
    pool = client.connection_pool
    pool.connection_class = fast_connection_class(pool.connection_class)
