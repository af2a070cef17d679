"""The web console's chat playground in a real browser, against the session's SmolLM2 `server`
(float32: greedy is deterministic): a clean load talking only to its own origin, a streamed
reply, stopping (the server aborts), model markup kept as text, layout and keys.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest
from console_browser import (
    ASSISTANT,
    ECHO_MARKUP,
    LONG_STORY,
    MARKUP,
    USER,
    aborts,
    assert_fits,
    record_renders,
    reply_text,
    send,
    wait_ready,
    wait_streaming_text,
    wait_until,
)
from playwright.sync_api import Page, expect

from conftest import MODEL

# 1. The page and its requests.


def test_page_loads_clean_and_talks_only_to_its_own_origin(server, open_console):
    console = open_console(server)
    page = console.page
    wait_ready(page)
    card = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]
    expect(page.locator("#model-name")).to_have_text(MODEL)
    context_length = re.sub(r"\D", "", page.locator("#context-length").text_content() or "")
    assert context_length == str(card["max_model_len"]), (
        f"#context-length shows {page.locator('#context-length').text_content()!r}, "
        f"/v1/models says max_model_len {card['max_model_len']}"
    )
    reply = send(page, "Hi!", temperature=0, max_tokens=8)
    expect(reply).to_have_attribute("data-state", "done")
    assert reply_text(reply).strip(), "the reply to 'Hi!' is empty"
    expect(reply.locator(".message-stats")).to_contain_text("TTFT")
    with page.expect_response(lambda r: "/engine/snapshot" in r.url) as first:
        page.click("#tab-engine")
    assert first.value.status == 200, f"the first poll answered {first.value.status}"
    expect(page.locator("#engine-panel")).to_be_visible()
    expect(page.locator("#chat-panel")).to_be_hidden()
    with page.expect_response(lambda r: "/engine/snapshot" in r.url) as second:
        pass
    assert "history_since=" in second.value.url, f"a poll without history_since: {second.value.url}"
    expect(page.locator("section.kv-group").first).to_be_visible()
    assert console.problems == [], f"the page printed: {console.problems}"
    assert console.foreign_requests() == [], f"requests to other origins: {console.foreign_requests()}"
    paths = sorted({urlsplit(r.url).path for r in console.requests})
    assert "/v1/chat/completions" in paths and "/engine/snapshot" in paths, f"requested paths: {paths}"


# 2. A streamed reply.


def test_greedy_question_streams_paris(server, open_console):
    page = open_console(server).page
    wait_ready(page)
    record_renders(page)
    reply = send(page, "What is the capital of France?", temperature=0, max_tokens=32, system_prompt="")
    expect(reply).to_have_attribute("data-state", "done")
    text = reply_text(reply)
    assert "Paris" in text, f"the reply: {text!r}"
    renders = page.evaluate("window.__renders")
    streaming = sorted({length for state, length in renders if state == "streaming" and length > 0})
    assert streaming, f"no render while streaming showed text; (state, length) seen: {renders}"
    assert streaming[0] < len(text), f"text lengths while streaming {streaming}, final {len(text)}"
    user = page.locator(USER).last
    expect(user).to_contain_text("What is the capital of France?")


# 3. Stopping.


@pytest.mark.parametrize("how", ["stop button", "Esc key"])
def test_stop_ends_a_long_reply_and_the_server_aborts_it(server, open_console, how):
    console = open_console(server)
    page = console.page
    wait_ready(page)
    before = aborts(server)
    reply = send(page, LONG_STORY, temperature=1, max_tokens=2000, seed=7)
    wait_streaming_text(page, 40)
    expect(page.locator("#stop")).to_be_enabled()
    if how == "stop button":
        page.click("#stop")
    else:
        page.evaluate("document.activeElement.blur()")  # Esc works anywhere, not only in #prompt
        page.keyboard.press("Escape")
    expect(reply).to_have_attribute("data-state", "stopped")
    expect(page.locator("#stop")).to_be_disabled()
    # The abort lands when the server sees the connection close.
    assert wait_until(lambda: aborts(server) >= before + 1, 15), (
        f"request_success_total{{finished_reason=abort}} went {before} -> {aborts(server)} after the {how}"
    )
    assert reply_text(reply).strip(), "the stopped reply lost its text"
    assert console.problems == [], f"the page printed: {console.problems}"


# 4. Model output stays text.


def _assert_markup_is_text(page: Page, article, what: str) -> None:
    content = article.locator(".message-content")
    text = content.text_content() or ""
    elements = content.evaluate(
        "c => [...c.querySelectorAll('script, img, iframe, object, embed')].map(e => e.outerHTML)"
    )
    assert elements == [], f"{what}: elements created from model text: {elements}"
    handlers = content.evaluate(
        "c => [...c.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
        ".filter(n => n.startsWith('on'))"
    )
    assert handlers == [], f"{what}: event-handler attributes in the rendered text: {handlers}"
    assert page.evaluate("window.__pwned") is None, f"{what}: window.__pwned was set"
    for literal in ("<script>", "</script>", "<img src=x onerror="):
        assert literal in text, f"{what}: {literal!r} not shown as text in {text!r}"


def test_markup_in_a_streamed_reply_shows_as_text(server, open_console):
    console = open_console(server)
    page = console.page
    wait_ready(page)
    reply = send(page, ECHO_MARKUP, temperature=0, max_tokens=48, system_prompt="")
    expect(reply).to_have_attribute("data-state", "done")
    _assert_markup_is_text(page, reply, "SmolLM2's echo")
    assert console.problems == [], f"the page printed: {console.problems}"


def test_renderer_builds_no_elements_from_markup(server, open_console):
    # bypass_csp: the page's CSP would block an injected handler anyway; without it, a renderer
    # that parsed model text as HTML would set window.__pwned here.
    console = open_console(server, bypass_csp=True)
    page = console.page
    wait_ready(page)
    page.evaluate(
        """async markup => {
          const { renderInto } = await import('/console/render.js');
          const article = document.createElement('article');
          article.className = 'message';
          article.id = 'render-probe';
          article.dataset.role = 'assistant';
          const content = document.createElement('div');
          content.className = 'message-content';
          article.appendChild(content);
          document.getElementById('messages').appendChild(article);
          renderInto(content, markup);
          renderInto(content, markup + '\\n\\n' + markup);  // a streaming re-render
        }""",
        MARKUP,
    )
    # An <img src=x> would fail to load and run its onerror after a round trip to the server.
    page.wait_for_load_state("networkidle")
    article = page.locator("#render-probe")
    _assert_markup_is_text(page, article, "renderInto")
    content = article.locator(".message-content")
    expect(content.locator("strong")).to_have_text(["bold", "bold"])
    expect(content.locator("code").first).to_have_text("<b>x</b>")
    assert console.problems == [], f"the page printed: {console.problems}"


# 7. Layout and keys.


@pytest.mark.parametrize("width,height", [(375, 740), (1280, 800)])
def test_layout_fits_the_viewport(server, open_console, width, height):
    console = open_console(server, width=width, height=height)
    page = console.page
    wait_ready(page)
    assert_fits(page, width, ["#prompt", "#send", "#stop", "#tab-chat", "#tab-engine", "#model-name"])
    page.click("#tab-engine")
    expect(page.locator("section.kv-group").first).to_be_visible()
    assert_fits(page, width, ["section.kv-group", "section.kv-group canvas", "#stat-running", "#plot-kv"])
    assert console.problems == [], f"the page printed: {console.problems}"


def test_shift_enter_adds_a_line_and_enter_sends(server, open_console):
    page = open_console(server).page
    wait_ready(page)
    page.fill("#max-tokens", "4")
    page.click("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    value = page.input_value("#prompt")
    assert value == "first line\nsecond line", f"#prompt holds {value!r}"
    assert page.locator(USER).count() == 0, "Shift+Enter sent the message"
    page.keyboard.press("Enter")
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_contain_text("second line")
    expect(page.locator(ASSISTANT).first).to_have_attribute("data-state", "done")
