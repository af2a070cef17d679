"""Server-sent events, concurrent merging of engine streams, and aborting when the client leaves.

A request stops costing engine time as soon as its client goes away: streaming responses close
their body iterator (which closes the engine streams, which aborts the requests) and
non-streaming handlers run under `cancel_on_disconnect`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec
from fastapi import Request
from fastapi.responses import Response

from pagedllm.entrypoints.openai.errors import OpenAIError, to_openai_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]

# Characters that JSON leaves raw in strings but that Python's str.splitlines() (and so httpx's
# iter_lines, and many hand-written SSE readers) treat as line ends: a token decoding to one of
# them would cut its event in two for those clients. Escaped, the JSON is the same.
_LINE_BREAKING_ESCAPES = (
    ("\x85".encode(), b"\\u0085"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)
_json_encoder = msgspec.json.Encoder()


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as compact JSON (UTF-8), on one line for any
    line splitter (the SSE ones split on CR and LF only; str.splitlines also on U+0085, U+2028
    and U+2029, which are escaped)."""
    text = _json_encoder.encode(payload)
    if not text.isascii():
        for raw, escaped in _LINE_BREAKING_ESCAPES:
            if raw in text:
                text = text.replace(raw, escaped)
    return b"data: " + text + b"\n\n"


def sse_error(exc: BaseException) -> bytes:
    """An error that happens after the 200 went out is the stream's last event before [DONE]."""
    return sse(to_openai_error(exc).body())


class SSEResponse(Response):
    """A text/event-stream response that always closes its events (aborting their requests).

    Plain ASGI rather than Starlette's StreamingResponse: each event is one `send` with nothing
    in between, since at high concurrency the server's CPU per streamed token comes out of the
    cores the model runs on. A second task waits for the client to hang up, which stops the
    stream (uvicorn's `send` to a closed connection returns silently)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], request_id: str):
        self.events = events
        self.request_id = request_id
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_SSE_HEADERS)

    async def _stream(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        streaming = asyncio.ensure_future(self._stream(send))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((streaming, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            complete = streaming.done() and not streaming.cancelled()
            if not streaming.done():
                streaming.cancel()
            await asyncio.gather(streaming, watcher, return_exceptions=True)
            await self.events.aclose()
            if not complete:
                logger.info("%s: client disconnected; request aborted", self.request_id)
        if not complete:
            return
        streaming.result()  # an error while writing is the server's, as for any response
        if self.background is not None:
            await self.background()


class _Primed:
    """A stream whose first item has been taken already (see `prime_streams`)."""

    def __init__(self, first, stream: AsyncIterator):
        self.first = first
        self.stream = stream
        self._first_taken = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._first_taken:
            self._first_taken = True
            return self.first
        return await anext(self.stream)

    def take_first(self) -> tuple[bool, object]:
        """(True, the first item) once, then (False, None): for a caller that then iterates
        `self.stream` itself, one layer fewer per item."""
        if self._first_taken:
            return False, None
        self._first_taken = True
        return True, self.first

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


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
    return [_Primed(first, stream) for first, stream in zip(firsts, streams)]


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of all streams as they arrive, tagged with the stream's index; closing the merged
    iterator (or an error in one stream) closes every stream."""
    pending: dict[asyncio.Future, int] = {}
    try:
        if len(streams) == 1:
            # One stream (n=1, one prompt: most requests) costs no extra layer per item.
            stream = streams[0]
            if isinstance(stream, _Primed):
                has_first, first = stream.take_first()
                if has_first:
                    yield 0, first
                stream = stream.stream
            async for item in stream:
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


async def _wait_for_disconnect(receive) -> None:
    # Once the body is read, the server's receive() returns only when the client hangs up.
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T], request_id: str) -> T:
    """Await `work`, cancelling it (and so aborting its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request.receive))
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
