"""Server-sent events, concurrent merging of engine streams, and aborting when the client leaves.

A request stops costing engine time as soon as its client goes away: streaming responses close
their body iterator (which closes the engine streams, which aborts the requests) and
non-streaming handlers run under `cancel_on_disconnect`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from pagedllm.entrypoints.openai.errors import OpenAIError, to_openai_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


# Characters that JSON leaves raw in strings but that Python's str.splitlines() (and so httpx's
# iter_lines, and many hand-written SSE readers) treat as line ends: a token decoding to one of
# them would cut its event in two for those clients. Escaped, the JSON is the same.
_LINE_BREAKING_ESCAPES = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying `payload` as compact JSON, on one line for any line
    splitter (the SSE ones split on CR and LF only; str.splitlines also on U+0085, U+2028 and
    U+2029, which are escaped)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text.translate(_LINE_BREAKING_ESCAPES)}\n\n"


def sse_error(exc: BaseException) -> str:
    """An error that happens after the 200 went out is the stream's last event before [DONE]."""
    return sse(to_openai_error(exc).body())


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always closes its events (aborting their requests)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], request_id: str):
        self.events = events
        self.request_id = request_id
        self.complete = False
        super().__init__(self._watch())

    async def _watch(self) -> AsyncIterator[str]:
        async for event in self.events:
            yield event
        self.complete = True

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self.events.aclose()
            if not self.complete:
                logger.info("%s: client disconnected; request aborted", self.request_id)


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


async def _prepend(first: T, stream: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in stream:
            yield item
    finally:
        await stream.aclose()


async def prime_streams(streams: list[AsyncIterator[T]]) -> list[AsyncIterator[T]]:
    """Wait for every stream's first item, so that a validation error becomes an HTTP error
    rather than an error inside a 200 stream; on failure every stream is closed."""
    tasks = [asyncio.ensure_future(_next(s)) for s in streams]
    try:
        firsts = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
        raise
    return [_prepend(first, stream) for first, stream in zip(firsts, streams)]


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of all streams as they arrive, tagged with the stream's index; closing the merged
    iterator (or an error in one stream) closes every stream."""
    pending: dict[asyncio.Future, int] = {}
    try:
        if len(streams) == 1:
            async for item in streams[0]:
                yield 0, item
            return
        pending = {asyncio.ensure_future(_next(s)): i for i, s in enumerate(streams)}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                index = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(_next(streams[index]))] = index
                yield index, item
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def _wait_for_disconnect(request: Request) -> None:
    # Once the body is read, the server's receive() returns only when the client hangs up.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T], request_id: str) -> T:
    """Await `work`, cancelling it (and so aborting its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            logger.info("%s: client disconnected; request aborted", request_id)
    if task.cancelled():
        raise OpenAIError(499, "the client closed the connection", code="client_disconnected")
    return task.result()
