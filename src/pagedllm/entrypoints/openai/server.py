"""The OpenAI-compatible server: routes, API-key check, and `run_server` behind `pagedllm serve`."""

from __future__ import annotations

import argparse
import logging
import os
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import pagedllm
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.engine.startup_gc import freeze_startup_objects
from pagedllm.entrypoints.openai import chat, completions, tokenization
from pagedllm.entrypoints.openai.context import ServingContext
from pagedllm.entrypoints.openai.docs import ASSETS_PATH, DOCS_PATHS, install_offline_docs
from pagedllm.entrypoints.openai.errors import OpenAIError, install_error_handlers
from pagedllm.entrypoints.openai.lifecycle import DEFAULT_SHUTDOWN_TIMEOUT_S, DrainGate, DrainingServer
from pagedllm.entrypoints.openai.openapi import install_openapi
from pagedllm.entrypoints.openai.reasoning import REASONING_PARSERS
from pagedllm.entrypoints.openai.request_guard import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    RequestGuard,
)
from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS
from pagedllm.entrypoints.web_console.routes import (
    CONSOLE_PREFIX,
    OPENAPI_OPERATIONS,
    PAGE_PATHS,
    install_web_console,
)

logger = logging.getLogger(__name__)

# Paths answered without an API key: liveness probes, the version, the schema, the docs pages and
# the web console's page and files (no data in any), and Prometheus scrapes unless
# --metrics-require-api-key.
OPEN_PATHS = frozenset({"/health", "/ready", "/version", "/openapi.json"}) | DOCS_PATHS | PAGE_PATHS
OPEN_PREFIXES = (ASSETS_PATH + "/", CONSOLE_PREFIX)


class APIKeyMiddleware:
    """Answer 401 unless `Authorization: Bearer <key>` matches (plain ASGI, so streams pass through)."""

    def __init__(self, app, api_key: str, open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self.api_key = api_key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in self.open_paths
            or path.startswith(OPEN_PREFIXES)
            or scope["method"] == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            message = "missing or invalid API key; send 'Authorization: Bearer <key>'"
            response = OpenAIError(401, message, code="invalid_api_key").response()
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(ctx: ServingContext) -> FastAPI:
    # docs_url/redoc_url None: FastAPI's pages load from a CDN; install_offline_docs serves both.
    app = FastAPI(title="pagedllm", version=pagedllm.__version__, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)
    install_offline_docs(app)
    # Added before the key check, so it runs after it: no body is read for an unauthorized client.
    app.add_middleware(
        RequestGuard, max_body_bytes=ctx.max_request_body_bytes, max_json_depth=ctx.max_json_depth
    )
    app.add_middleware(DrainGate, ctx=ctx)
    open_paths = None
    if ctx.api_key:
        open_paths = OPEN_PATHS if ctx.metrics_require_api_key else OPEN_PATHS | {"/metrics"}
        app.add_middleware(APIKeyMiddleware, api_key=ctx.api_key, open_paths=open_paths)

    @app.post("/v1/completions")
    async def create_completion(request: Request) -> Response:
        return await completions.create_completion(ctx, request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        return await chat.create_chat_completion(ctx, request)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [ctx.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict:
        ctx.check_model(model_id or "?")
        return ctx.model_card()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        return await tokenization.tokenize(ctx, request)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        return await tokenization.detokenize(ctx, request)

    @app.get("/health")
    async def health() -> Response:
        if not ctx.llm.is_running:
            raise OpenAIError(503, "the engine is not running", code="engine_dead")
        replicas = ctx.llm.replica_states()
        if replicas is None:
            return JSONResponse({"status": "ok"})
        # Data parallel: serving while any replica is; the body says which are down.
        return JSONResponse(
            {
                "status": "ok" if all(r.alive for r in replicas) else "degraded",
                "replicas": [
                    {"replica": r.index, "status": "serving" if r.alive else "dead", "pid": r.pid}
                    | ({} if r.alive else {"error": r.error})
                    for r in replicas
                ],
            }
        )

    @app.get("/ready")
    async def ready() -> Response:
        if ctx.draining:
            raise OpenAIError(503, "the server is shutting down", code="server_shutting_down")
        if not ctx.llm.is_running:
            raise OpenAIError(503, "the engine is not running", code="engine_dead")
        return JSONResponse({"status": "ready"})

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": pagedllm.__version__})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(content=ctx.llm.metrics.render(), media_type=ctx.llm.metrics.content_type)

    install_web_console(app, ctx, page=ctx.web_console)
    install_openapi(
        app, ctx.served_model_name, ctx.max_model_len, ctx.vocab_size, open_paths, OPENAPI_OPERATIONS
    )
    return app


def log_capacity(llm: AsyncLLM) -> None:
    engine = llm.engine
    capacity, max_len = engine.kv_capacity_tokens, engine.max_model_len
    logger.info(
        "KV cache: %d tokens; maximum concurrency for %d-token requests: %.2fx",
        capacity,
        max_len,
        capacity / max_len,
    )


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $PAGEDLLM_API_KEY)"
    )
    parser.add_argument(
        "--metrics-require-api-key",
        action="store_true",
        help="with --api-key, /metrics needs the key too (Prometheus: authorization credentials)",
    )
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: MODEL)")
    parser.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get a 413 (default 32 MiB; a 100k-token prompt is under 1 MiB as "
        "text or token ids, so raise it for batches of millions of tokens)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="on SIGTERM/SIGINT, how long requests in flight may run on before they are ended "
        "(default %(default)s s; /ready answers 503 meanwhile, /health 200)",
    )
    parser.add_argument(
        "--max-json-depth",
        type=int,
        default=DEFAULT_MAX_JSON_DEPTH,
        help="request bodies nesting arrays/objects deeper get a 400 (default %(default)s)",
    )
    parser.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help="allow tool_choice 'auto' (the model decides; its output is parsed by --tool-call-parser)",
    )
    parser.add_argument(
        "--tool-call-parser",
        default=None,
        choices=sorted(TOOL_PARSERS),
        help="how tool calls are read from free output: hermes (<tool_call> JSON blocks, what the "
        "built-in ChatML tool template asks for), llama3_json, mistral, pythonic",
    )
    parser.add_argument(
        "--reasoning-parser",
        default=None,
        choices=sorted(REASONING_PARSERS),
        help="move <think>...</think> into reasoning_content (deepseek_r1, qwen3)",
    )
    parser.add_argument(
        "--web-console",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the web console (chat playground and engine view) at / (default); "
        "--no-web-console leaves / unanswered (GET /engine/snapshot stays)",
    )
    parser.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the engine loop in its own process (default; measured 30-40%% more output tokens/s "
        "than a thread of the server process on 2 cores) or, with --no-engine-process, in a thread",
    )


# The serving default token budget per step: smaller than the offline 2048 so a burst of new
# prompts is prefilled in shorter steps that running streams interleave with. Measured with
# `bench serve` at concurrency 32 (64 x 128 -> 128 tokens, bf16, 2 cores): budget 512: 653
# output tok/s, median TTFT 428 ms; 1024: 671, 662 ms; 2048: 675, 926 ms.
SERVING_BATCHED_TOKENS = 1024


def run_server(args: argparse.Namespace) -> int:
    """Load the engine, then serve until interrupted (SIGINT/SIGTERM)."""
    import uvicorn

    from pagedllm.engine.arg_utils import engine_config_from_args

    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise SystemExit("--enable-auto-tool-choice needs --tool-call-parser NAME")
    if args.max_request_body_bytes < 1 or args.max_json_depth < 1:
        raise SystemExit("--max-request-body-bytes and --max-json-depth must be at least 1")
    api_key = args.api_key or os.environ.get("PAGEDLLM_API_KEY") or None
    if args.metrics_require_api_key and not api_key:
        raise SystemExit("--metrics-require-api-key needs --api-key KEY (or $PAGEDLLM_API_KEY)")
    served_model_name = args.served_model_name or args.model
    if args.max_num_batched_tokens is None:
        args.max_num_batched_tokens = SERVING_BATCHED_TOKENS
    llm = AsyncLLM(
        engine_config_from_args(args),
        model_name=served_model_name,
        engine_process=args.engine_process,
        pin_threads=True,
    )
    try:
        ctx = ServingContext(
            llm,
            served_model_name=served_model_name,
            model_root=args.model,
            api_key=api_key,
            enable_auto_tool_choice=args.enable_auto_tool_choice,
            tool_call_parser=args.tool_call_parser,
            reasoning_parser=args.reasoning_parser,
            max_request_body_bytes=args.max_request_body_bytes,
            max_json_depth=args.max_json_depth,
            metrics_require_api_key=args.metrics_require_api_key,
            web_console=args.web_console,
        )
        log_capacity(llm)
        logger.info("serving %s on http://%s:%d", ctx.served_model_name, args.host, args.port)
        if args.web_console:
            logger.info("web console: http://%s:%d/", args.host, args.port)
        config = uvicorn.Config(
            build_app(ctx),
            host=args.host,
            port=args.port,
            log_level=args.log_level.lower(),
            # A backstop: the drain has already ended every request by then.
            timeout_graceful_shutdown=5,
        )
        server = DrainingServer(config, ctx, args.shutdown_timeout)
        freeze_startup_objects()  # this process serves until it exits
        server.run()
    finally:
        llm.shutdown()
    return server.exit_code
