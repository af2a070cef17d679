"""`pagedllm serve` started as a user starts it, on a free port of 127.0.0.1, once per session.

Three servers in all: the real SmolLM2 model for behaviour, and a tiny random model (fast to
load, no chat template) with an API key, and the same with `--chat-template`. The browser tests'
`browser` and `open_console` fixtures are here too (helpers: console_browser.py).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

import tiny_models
from live_server import start_server

MODEL = "smollm2-135m-instruct"
API_KEY = "test-secret-key"
TINY_NAME = "tiny"
TINY_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# A small fixed KV cache: sizing one from free memory would allocate (and zero) gigabytes.
_TINY_ENGINE = ["--dtype", "float32", "--num-kv-blocks", "64"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The real model, float32 (deterministic greedy), a small KV cache."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    yield from start_server([MODEL, "--dtype", "float32", "--kv-cache-memory", "0.25"], log)


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny_models.save_tiny(tiny_models.llama_config(), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir, tmp_path_factory):
    """A tiny model without a chat template, behind an API key."""
    log = tmp_path_factory.mktemp("keyed") / "server.log"
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--api-key", API_KEY]
    yield from start_server(args + _TINY_ENGINE, log)


@pytest.fixture(scope="session")
def templated_server(tiny_model_dir, tmp_path_factory):
    """The same tiny model, given a chat template on the command line, without the web console
    (`--no-web-console`, checked in test_web_console_engine.py)."""
    folder = tmp_path_factory.mktemp("templated")
    template = folder / "template.jinja"
    template.write_text(TINY_TEMPLATE)
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--chat-template", str(template)]
    args.append("--no-web-console")
    yield from start_server(args + _TINY_ENGINE, folder / "server.log")


@pytest.fixture
def doomed_server(tiny_model_dir, tmp_path):
    """A tiny-model server of its own, for a test that kills (and hangs) its engine core: a
    3-second watchdog."""
    yield from start_server(
        [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--engine-watchdog", "3", *_TINY_ENGINE],
        tmp_path / "log",
    )


@pytest.fixture
def doomed_tp_server(tiny_model_dir, tmp_path):
    """A tiny-model server over two tensor-parallel ranks with no restarts, for a test that
    kills a worker."""
    yield from start_server(
        [str(tiny_model_dir), "--served-model-name", TINY_NAME, "-tp", "2", "--max-engine-restarts", "0"]
        + _TINY_ENGINE,
        tmp_path / "log",
    )


@pytest.fixture(scope="session")
def reasoning_server(tiny_model_dir, tmp_path_factory):
    """The tiny model with auto tool choice (hermes) and the deepseek_r1 reasoning parser."""
    folder = tmp_path_factory.mktemp("reasoning")
    template = folder / "template.jinja"
    # A template of its own (given with --chat-template, so used as it is).
    template.write_text(
        "{% for m in messages %}{{ m.role }}: {{ m.content or '' }}\n{% endfor %}"
        "{% if tools %}tools: {{ tools | map(attribute='function.name') | join(', ') }}\n{% endif %}"
        "assistant:"
    )
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--chat-template", str(template)]
    args += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "deepseek_r1"]
    yield from start_server(args + _TINY_ENGINE, folder / "server.log")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per browser test module (skipped without /usr/bin/chromium).

    Module scope, not session: Playwright's sync API keeps an event loop running in this thread
    while it is open, and later modules' `asyncio.run` refuses to start inside it."""
    from console_browser import CHROMIUM, TIMEOUT_MS
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        # expect()'s own default is 5 s: a reply on a busy 2-core CI machine can take longer.
        expect.set_options(timeout=TIMEOUT_MS)
        yield launched
        launched.close()


@pytest.fixture
def open_console(browser):
    """open_console(server, width=, height=, **context options) -> Console: the page loaded in a
    fresh context, its console messages, page errors and requests recorded from the start."""
    from console_browser import TIMEOUT_MS, Console, origin_of

    contexts = []

    def open_(server, width: int = 1280, height: int = 800, **options) -> Console:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        console = Console(page, origin_of(server.url))

        def on_console(message) -> None:
            if message.type in ("error", "warning", "warn"):
                console.problems.append(f"console {message.type}: {message.text} ({message.location})")

        page.on("console", on_console)
        page.on("pageerror", lambda error: console.problems.append(f"page error: {error}"))
        page.on("request", lambda request: console.requests.append(request))
        page.goto(f"{server.url}/")
        return console

    yield open_
    for context in contexts:
        context.close()
