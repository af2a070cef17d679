"""The web console's engine view and access in a real browser: the KV blocks of a running request
then free or cached (page and GET /engine/snapshot agree), the API key flow on the keyed tiny
server, and `--no-web-console`.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import httpx
from console_browser import (
    Console,
    check_block_states,
    kv_groups,
    reply_text,
    send,
    snapshot,
    wait_ready,
)
from playwright.sync_api import expect

from conftest import API_KEY, MODEL, TINY_NAME

# 5. The engine view.


def test_engine_tab_shows_the_blocks_of_a_running_request(server, open_console):
    page = open_console(server).page
    wait_ready(page)
    page.click("#tab-engine")
    expect(page.locator("section.kv-group").first).to_be_visible()
    stop = threading.Event()
    chunks: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            stream = server.client().chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Count from one to five hundred in words."}],
                max_tokens=400,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            with stream:
                for _ in stream:
                    chunks.append(1)
                    if stop.is_set():
                        break  # leaving closes the connection: the server aborts the request
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        page.wait_for_function(
            "() => [...document.querySelectorAll('section.kv-group')].some(s => Number(s.dataset.inUse) > 0)",
            timeout=60_000,
        )
        row = page.locator("#running-requests tr[data-request-id]")
        expect(row.first).to_be_visible()
        row_id = row.first.get_attribute("data-request-id")
        body = snapshot(server)
        running = [r for replica in body["replicas"] for r in replica["running"]]
        assert row_id in {r["request_id"] for r in running}, (
            f"the page's row {row_id!r}; the snapshot's running requests {running}"
        )
        assert all(r["num_blocks"] > 0 for r in running), f"running requests without blocks: {running}"
        groups = [g for replica in body["replicas"] for g in replica["kv_groups"]]
        assert any(check_block_states(g)[1] > 0 for g in groups), f"no block in use: {groups}"
        assert body["totals"]["num_running"] >= 1, body["totals"]
    finally:
        stop.set()
        thread.join(60)
    assert not failure, f"the request failed: {failure!r}"
    assert chunks, "the request streamed nothing"
    try:
        page.wait_for_function(
            """() => { const s = [...document.querySelectorAll('section.kv-group')];
                 return s.length > 0 && s.every(g => Number(g.dataset.inUse) === 0
                   && Number(g.dataset.free) + Number(g.dataset.cached) === Number(g.dataset.numBlocks)
                   && Number(g.dataset.cached) > 0); }""",
            timeout=15_000,
        )
    except Exception as error:
        raise AssertionError(f"after the request the page's KV groups read {kv_groups(page)}") from error
    expect(page.locator("#running-requests tr[data-request-id]")).to_have_count(0)
    body = snapshot(server)
    for replica in body["replicas"]:
        for group in replica["kv_groups"]:
            free, in_use, cached = check_block_states(group)
            assert in_use == 0 and cached > 0 and free + cached == group["num_blocks"], (
                f"after the request: free {free}, in use {in_use}, cached {cached} of {group['num_blocks']}"
            )
    assert body["totals"]["num_running"] == 0, body["totals"]


# 6. Behind an API key.


def _protected(console: Console) -> list[str]:
    """Requests to anything but the page itself and its files (those need no key)."""
    return [
        r.url
        for r in console.requests
        if urlsplit(r.url).path != "/" and not urlsplit(r.url).path.startswith("/console/")
    ]


def test_api_key_gates_the_snapshot_and_the_page(keyed_server, open_console):
    url = f"{keyed_server.url}/engine/snapshot"
    statuses = {
        "no key": httpx.get(url, timeout=10).status_code,
        "a wrong key": httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code,
        "the key": httpx.get(url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).status_code,
    }
    assert statuses == {"no key": 401, "a wrong key": 401, "the key": 200}, statuses

    console = open_console(keyed_server)
    page = console.page
    expect(page.locator("#auth-panel")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert _protected(console) == [], f"requests before the key was given: {_protected(console)}"
    page.fill("#api-key", API_KEY)
    page.click("#api-key-save")
    expect(page.locator("#auth-panel")).to_be_hidden()
    expect(page.locator("#model-name")).to_have_text(TINY_NAME)
    expect(page.locator("#mode")).to_have_text("completion")
    expect(page.locator("#system-prompt")).to_be_hidden()
    reply = send(page, "Once upon a time", temperature=0, max_tokens=12)
    expect(reply).to_have_attribute("data-state", "done")
    assert reply_text(reply).strip(), "the completion is empty"
    page.click("#tab-engine")
    group = page.locator("section.kv-group").first
    expect(group).to_be_visible()
    expect(group).to_have_attribute("data-num-blocks", "64")
    assert group.locator("canvas").count() >= 1, "the KV group has no canvas"
    unkeyed = [
        r.url
        for r in console.requests
        if r.url in _protected(console) and r.headers.get("authorization") != f"Bearer {API_KEY}"
    ]
    assert unkeyed == [], f"API calls without the key: {unkeyed}"
    assert any("/v1/completions" in u for u in _protected(console)), _protected(console)
    assert console.problems == [], f"the page printed: {console.problems}"
    assert console.foreign_requests() == [], console.foreign_requests()


def test_wrong_api_key_shows_an_error(keyed_server, open_console):
    page = open_console(keyed_server).page
    expect(page.locator("#auth-panel")).to_be_visible()
    page.fill("#api-key", "not-the-key")
    page.press("#api-key", "Enter")
    expect(page.locator("#auth-error")).to_be_visible()
    expect(page.locator("#auth-error")).not_to_have_text("")
    expect(page.locator("#auth-panel")).to_be_visible()


# 8. --no-web-console.


def test_no_web_console_leaves_the_page_out_and_keeps_the_snapshot(templated_server, keyed_server):
    # The console of a keyed server: the page and its files need no key, under the CSP.
    page = httpx.get(f"{keyed_server.url}/", timeout=10)
    assert page.status_code == 200, f"GET / on a keyed server: {page.status_code} {page.text[:200]}"
    assert 'name="pagedllm-api-key-required" content="true"' in page.text, page.text[:600]
    csp = page.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, f"CSP: {csp!r}"
    script = httpx.get(f"{keyed_server.url}/console/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"], (
        script.status_code,
        script.headers.get("content-type"),
    )
    assert httpx.get(f"{keyed_server.url}/console/missing.js", timeout=10).status_code == 404

    url = templated_server.url
    statuses = {path: httpx.get(url + path, timeout=10).status_code for path in ("/", "/console/app.js")}
    assert statuses == {"/": 404, "/console/app.js": 404}, f"with --no-web-console: {statuses}"
    body = snapshot(templated_server)
    # --chat-template gives the tiny model a template: the page would offer chat.
    assert body["model"]["name"] == TINY_NAME and body["model"]["chat_template"] is True, body["model"]
    (replica,) = body["replicas"]
    (group,) = replica["kv_groups"]
    assert group["num_blocks"] == 64, group
    check_block_states(group)
