"""An OpenAI-compatible chat completions server: the stand-in LLM of the tests and the demo.

No LLM is reachable from the test machines, so the tests and the demo run
this small HTTP server and point ``crewai.LLM(base_url=...)`` at it. It answers
``POST /v1/chat/completions`` in the shape the ``openai`` SDK parses, both as
one JSON body and as a server-sent-event stream when the request asks for
``"stream": true``, and it counts and keeps every request so a test can prove
that a cached answer did not reach the LLM.

The answer follows CrewAI's ReAct prompt format (``Thought`` then ``Final
Answer``), echoing a short excerpt of the last user message so a reply can be
traced back to the message that caused it.

It runs on its own event loop in a daemon thread (``BackgroundServer``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .background_http import BackgroundServer

Responder = Callable[[list[dict[str, Any]]], str]


def echo_responder(messages: list[dict[str, Any]]) -> str:
    """A final answer that quotes the start of the conversation's last user turn."""
    last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last_user.get("content", "")
    if isinstance(content, list):  # content parts
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    excerpt = " ".join(str(content).split())[:60]
    return f"Thought: I now can give a great answer\nFinal Answer: Falachefe responde: {excerpt}"


@dataclass
class FakeOpenAI:
    """The server; ``base_url`` is what ``crewai.LLM`` and ``openai.OpenAI`` take."""

    responder: Responder = echo_responder
    #: Seconds to wait before answering: lets tests catch a job in flight.
    delay_s: float = 0.0
    #: Per-request delays, used up first to last before ``delay_s`` applies.
    delays: list[float] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Loopback, or the host end of a local node's link when pods call it.
    host: str = "127.0.0.1"
    port: int = 0
    #: Requests being answered right now, by the caller's address (a pod's IP, for pods).
    in_flight: Counter[str] = field(default_factory=Counter)
    _server: BackgroundServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        """Forget the requests seen so far and answer without delay."""
        with self._lock:
            self.requests.clear()
            self.delays.clear()
        self.delay_s = 0.0

    def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # A killed worker leaves its request behind: cancel it, and never wait long for one on shutdown.
        self._server = BackgroundServer(
            app, name="llm-standin", host=self.host, port=self.port, handler_cancellation=True, shutdown_timeout=1.0
        )
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def callers_in_flight(self) -> dict[str, int]:
        """How many requests each caller (by address) is waiting on right now."""
        with self._lock:
            return {caller: count for caller, count in self.in_flight.items() if count}

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        caller = request.remote or "unknown"
        with self._lock:
            self.in_flight[caller] += 1
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self.in_flight[caller] -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            delay = self.delays.pop(0) if self.delays else self.delay_s
        if delay:
            await asyncio.sleep(delay)
        content = self.responder(body.get("messages", []))
        model = body.get("model", "fake-model")
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        usage = {"prompt_tokens": 10, "completion_tokens": len(content.split()), "total_tokens": 10}
        usage["total_tokens"] += usage["completion_tokens"]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        await response.write(chunk({"role": "assistant", "content": ""}, None))
        words = content.split(" ")
        for position, word in enumerate(words):
            await response.write(chunk({"content": word if position == len(words) - 1 else word + " "}, None))
        await response.write(chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
