"""Transport-level checks on request bodies, answered as OpenAI errors before any route runs.

A plain ASGI middleware: responses (streams included) pass through untouched, and a request
without a body costs a header lookup.
"""

from __future__ import annotations

import numpy as np

from pagedllm.entrypoints.openai.errors import OpenAIError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 64

# Every byte but quotes and brackets: once escapes are gone, those alone shape the nesting.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
# +1 for an opening bracket, -1 for a closing one: the running sum is the nesting depth.
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
_QUOTE = ord('"')
# Bytes per vectorized pass, so a body of nothing but brackets needs a few MiB of scratch, not 5 x its size.
_DEPTH_CHUNK = 1 << 20


def json_depth_over(body: bytes, bound: int) -> int:
    """0 if arrays and objects in `body` nest at most `bound` deep, else the depth they reach.

    Scans the bytes in C and numpy passes, without recursion (a body of a million `[` is no
    RecursionError); brackets inside strings do not count.
    """
    if body.count(b"[") + body.count(b"{") <= bound:
        return 0
    # Backslashes appear only inside strings: drop escaped backslashes, then escaped quotes, and
    # every quote left opens or closes a string.
    structure = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    depth = deepest = 0
    in_string = False
    for start in range(0, len(structure), _DEPTH_CHUNK):
        count = min(_DEPTH_CHUNK, len(structure) - start)
        chunk = np.frombuffer(structure, dtype=np.uint8, count=count, offset=start)
        quotes = chunk == _QUOTE
        inside = (np.cumsum(quotes, dtype=np.int32) & 1).astype(bool) ^ in_string
        steps = np.where(inside, 0, _DEPTH_STEP[chunk]).astype(np.int32)
        running = np.cumsum(steps) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
        in_string = bool(inside[-1])
    return deepest if deepest > bound else 0


def _too_large(limit: int, got: str) -> OpenAIError:
    return OpenAIError(
        413,
        f"the request body ({got}) is larger than this server's limit of {limit} bytes; "
        "start the server with a larger --max-request-body-bytes to accept it",
        code="request_too_large",
    )


class RequestGuard:
    """Answer 413 for bodies over `max_body_bytes`, and, on the JSON POST routes, 415 for another
    Content-Type and 400 for a body that is not UTF-8, holds a NUL byte or nests deeper than
    `max_json_depth`."""

    def __init__(
        self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self._json_paths: frozenset[str] | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if (length is None or length == b"0") and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        json_route = scope["method"] == "POST" and scope["path"] in self._json_routes(scope)
        body = None
        try:
            self._check_length(length)
            if json_route:
                self._check_content_type(headers.get(b"content-type"))
                body = await self._read_body(receive)
                if body is not None:
                    self._check_json_bytes(body)
        except OpenAIError as exc:
            await exc.response()(scope, receive, send)
            return
        if not json_route:
            await self.app(scope, self._counting(receive), send)
        elif body is not None:  # else the client left: nobody to answer
            await self.app(scope, _replay(body, receive), send)

    def _json_routes(self, scope) -> frozenset[str]:
        # Routes are registered after the middleware is added, so they are read on first use.
        if self._json_paths is None:
            routes = scope["app"].routes
            self._json_paths = frozenset(
                r.path for r in routes if "POST" in (getattr(r, "methods", None) or ())
            )
        return self._json_paths

    def _check_length(self, length: bytes | None) -> None:
        if length is None:
            return
        try:
            size = int(length)
        except ValueError:
            raise OpenAIError(
                400,
                f"invalid Content-Length header {length.decode('latin-1')!r}",
                code="invalid_content_length",
            ) from None
        if size > self.max_body_bytes:
            raise _too_large(self.max_body_bytes, f"Content-Length {size}")

    def _check_content_type(self, content_type: bytes | None) -> None:
        # A missing Content-Type is taken as JSON, as the routes have always taken it.
        if content_type is None:
            return
        media = content_type.split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            raise OpenAIError(
                415,
                f"Content-Type must be application/json, got {content_type.decode('latin-1')!r}",
                code="unsupported_media_type",
            )

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or a 413 as soon as more than the limit has arrived (chunked bodies
        carry no Content-Length to check up front); None if the client disconnects."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _too_large(self.max_body_bytes, f"more than {self.max_body_bytes} bytes received")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check_json_bytes(self, body: bytes) -> None:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise OpenAIError(
                400,
                f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); "
                "send JSON encoded as UTF-8",
                code="invalid_utf8",
            ) from None
        nul = body.find(b"\x00")
        if nul >= 0:
            raise OpenAIError(
                400,
                f"the request body contains a NUL byte at offset {nul}; JSON text may not hold raw NUL "
                "bytes (inside a string write \\u0000)",
                code="nul_byte",
            )
        depth = json_depth_over(body, self.max_json_depth)
        if depth:
            raise OpenAIError(
                400,
                f"the request body nests JSON arrays/objects {depth} levels deep; this server allows at "
                f"most {self.max_json_depth} (start it with a larger --max-json-depth to accept more)",
                code="json_too_deep",
            )

    def _counting(self, receive):
        """`receive`, raising a 413 once more than the limit has been read (for routes that read
        a body themselves)."""
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _too_large(self.max_body_bytes, f"more than {self.max_body_bytes} bytes received")
            return message

        return counted


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's own messages
    (a streaming response listens on them for a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
