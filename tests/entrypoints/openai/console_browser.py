"""Helpers for the web console's browser tests (test_web_console_chat.py, test_web_console_engine.py).

Debian's headless Chromium (/usr/bin/chromium, which .ci/run installs) driven by Playwright's sync
API; the fixtures (`browser`, `open_console`) live in conftest.py. Every wait is on an event or a
DOM condition, with a timeout; nothing is mocked: pages talk to the session's live servers.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Request, expect
from prometheus_client.parser import text_string_to_metric_families

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing: the web console tests need Debian's chromium package "
        "(.ci/run installs it with apt-get)",
        allow_module_level=True,
    )

TIMEOUT_MS = 30_000
ASSISTANT = '#messages article.message[data-role="assistant"]'
USER = '#messages article.message[data-role="user"]'
LONG_STORY = "Tell me a very long story about a dragon and a knight, with many chapters."
# SmolLM2 at temperature 0 echoes this back verbatim, both tags outside any code fence.
ECHO_MARKUP = (
    'Echo back this text verbatim: <img src=x onerror="window.__pwned=1"> and '
    "<script>window.__pwned=2</script>"
)
MARKUP = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> **bold** `<b>x</b>`'


@dataclass
class Console:
    """A page of the console, with what it printed and every request it made."""

    page: Page
    origin: str
    problems: list[str] = field(default_factory=list)  # console errors and warnings, page errors
    requests: list[Request] = field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the server's own origin (data: URLs never leave the page)."""
        return [
            r.url for r in self.requests if not r.url.startswith("data:") and origin_of(r.url) != self.origin
        ]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def wait_ready(page: Page) -> None:
    """The start-up snapshot has filled in the header."""
    page.wait_for_function(
        "() => { const t = document.getElementById('model-name').textContent.trim();"
        " return t !== '' && t !== '…'; }"
    )


def send(page: Page, text: str, **settings) -> object:
    """Type `text` into #prompt (settings: temperature=, max_tokens=, seed=, system_prompt=), press
    Enter, and return the locator of the new assistant article."""
    for name, value in settings.items():
        selector = "#" + name.replace("_", "-")
        page.fill(selector, "" if value is None else str(value))
    before = page.locator(ASSISTANT).count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.wait_for_function(
        f"n => document.querySelectorAll('{ASSISTANT}').length > n", arg=before, timeout=TIMEOUT_MS
    )
    return page.locator(ASSISTANT).nth(before)


def reply_text(article) -> str:
    return article.locator(".message-content").text_content() or ""


def wait_streaming_text(page: Page, min_chars: int) -> None:
    """The newest assistant article is streaming and shows at least `min_chars` characters."""
    page.wait_for_function(
        """([sel, n]) => { const all = document.querySelectorAll(sel); const a = all[all.length - 1];
             return a && a.dataset.state === 'streaming'
               && (a.querySelector('.message-content')?.textContent.length || 0) >= n; }""",
        arg=[ASSISTANT, min_chars],
        timeout=60_000,
    )


def record_renders(page: Page) -> None:
    """From now on, window.__renders gets [data-state, text length] of the newest assistant
    article at every change of the conversation's DOM."""
    page.evaluate(
        """sel => {
          window.__renders = [];
          const messages = document.getElementById('messages');
          new MutationObserver(() => {
            const all = messages.querySelectorAll(sel);
            const a = all[all.length - 1];
            if (!a) return;
            const text = a.querySelector('.message-content')?.textContent || '';
            window.__renders.push([a.dataset.state, text.length]);
          }).observe(messages, {subtree: true, childList: true, characterData: true, attributes: true});
        }""",
        ASSISTANT,
    )


def metric(server, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from GET /metrics."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def aborts(server) -> float:
    return metric(server, "pagedllm:request_success_total", finished_reason="abort")


def wait_until(condition, timeout: float) -> bool:
    """Poll `condition` every 0.2 s until it holds or `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def snapshot(server, api_key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{server.url}/engine/snapshot", headers=headers, timeout=30)
    assert response.status_code == 200, f"GET /engine/snapshot: {response.status_code} {response.text[:300]}"
    return response.json()


def check_block_states(group: dict) -> tuple[int, int, int]:
    """The base64 block_states agree with the group's counts; returns (free, in use, cached)."""
    states = base64.b64decode(group["block_states"])
    counts = (states.count(0), states.count(1), states.count(2))
    assert len(states) == group["num_blocks"], f"{len(states)} block states for {group['num_blocks']} blocks"
    assert counts == (group["num_free"], group["num_in_use"], group["num_cached"]), (
        f"block_states counts free/in use/cached {counts}, the group says "
        f"{(group['num_free'], group['num_in_use'], group['num_cached'])}"
    )
    assert sum(counts) == len(states), f"block_states holds bytes other than 0/1/2: {set(states)}"
    return counts


def kv_groups(page: Page) -> list[dict]:
    return page.evaluate(
        """() => [...document.querySelectorAll('section.kv-group')].map(s => ({
            replica: s.dataset.replica, group: s.dataset.group, num_blocks: Number(s.dataset.numBlocks),
            free: Number(s.dataset.free), in_use: Number(s.dataset.inUse), cached: Number(s.dataset.cached)}))"""
    )


def assert_fits(page: Page, width: int, selectors: list[str]) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"the page scrolls sideways: scrollWidth {scroll_width} > {width}"
    for selector in selectors:
        element = page.locator(selector).first
        expect(element).to_be_visible()
        box = element.bounding_box()
        assert box is not None, f"{selector} has no box"
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (
            f"{selector} spans x {box['x']:.1f}..{box['x'] + box['width']:.1f}, outside 0..{width}"
        )
