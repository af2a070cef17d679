"""The web console's routes: the page at `/`, its files under `/console/`, and the engine
snapshot the page's engine view polls (GET /engine/snapshot, in the OpenAPI document).

The page and its files hold no data, so they are served without the API key; the page asks for
the key and sends it on its API calls. Every console file is served with a Content-Security-
Policy that allows nothing from another origin and no inline script, so even text that slipped
into the page as markup could not run or fetch anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from pagedllm.entrypoints.web_console.snapshot_schema import EngineSnapshotResponse
from pagedllm.entrypoints.web_console.snapshot_view import snapshot_body

STATIC_DIR = Path(__file__).parent / "static"
CONSOLE_PREFIX = "/console/"
PAGE_PATHS = frozenset({"/"})
SNAPSHOT_PATH = "/engine/snapshot"
# How long a snapshot call waits for the cores to answer before it serves the latest it has.
SNAPSHOT_TIMEOUT_S = 2.0

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load, so an upgraded server never runs an old page.
    "Cache-Control": "no-cache",
}
_KEY_PLACEHOLDER = "__API_KEY_REQUIRED__"


def load_console_files(api_key_required: bool) -> dict[str, tuple[bytes, str]]:
    """Every file of the page, by URL path, read once: (content, content type)."""
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(f"the web console's files are missing from {STATIC_DIR}; reinstall pagedllm")
    files = {}
    for path in sorted(STATIC_DIR.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        content = path.read_bytes()
        if path.name == "index.html":
            content = content.replace(_KEY_PLACEHOLDER.encode(), b"true" if api_key_required else b"false")
            files["/"] = (content, content_type)
        else:
            files[CONSOLE_PREFIX + path.name] = (content, content_type)
    return files


def install_web_console(app: FastAPI, ctx, page: bool = True) -> None:
    """Add GET /engine/snapshot, and with `page` the console's page and files (left out of
    the OpenAPI document: they are not API)."""

    @app.get(SNAPSHOT_PATH)
    async def engine_snapshot(
        history_since: Annotated[
            float | None,
            Query(
                allow_inf_nan=False,
                description="only history samples newer than this (seconds since the epoch)",
            ),
        ] = None,
    ) -> JSONResponse:
        llm = ctx.llm
        snapshots = await llm.engine_snapshots(SNAPSHOT_TIMEOUT_S)
        body = snapshot_body(
            model_facts(ctx),
            snapshots,
            llm.replica_states(),
            llm.metric_totals(),
            llm.history_since(history_since),
        )
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    if not page:
        return
    files = load_console_files(api_key_required=bool(ctx.api_key))

    def serve(path: str) -> Response:
        found = files.get(path)
        if found is None:
            raise HTTPException(404)
        content, content_type = found
        return Response(content, media_type=content_type, headers=_HEADERS)

    @app.get("/", include_in_schema=False)
    async def console_page() -> Response:
        return serve("/")

    @app.get(CONSOLE_PREFIX + "{name}", include_in_schema=False)
    async def console_file(name: str) -> Response:
        return serve(CONSOLE_PREFIX + name)


def model_facts(ctx) -> dict:
    """What the page shows about the served model and the engine's shape."""
    engine = ctx.llm.engine
    return {
        "name": ctx.served_model_name,
        "max_model_len": ctx.max_model_len,
        "chat_template": bool(ctx.chat_template or getattr(ctx.tokenizer, "chat_template", None)),
        "block_size": engine.info.block_size,
        "device": engine.info.device,
        "dtype": engine.info.dtype,
        "data_parallel_size": engine.config.data_parallel_size,
    }


# For the OpenAPI document (openapi.build_openapi's `extra_operations`): path -> method ->
# (request body model, response model, summary, error statuses).
OPENAPI_OPERATIONS = {
    SNAPSHOT_PATH: {
        "get": (
            None,
            EngineSnapshotResponse,
            "The engine's state for the web console: each replica's KV block pools (a byte per "
            "block), running and waiting requests, counters, and one history sample a second.",
            (400, 401, 405),
        )
    }
}
