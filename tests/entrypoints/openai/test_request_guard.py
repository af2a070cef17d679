"""Bad input at the transport level: each a 4xx naming the problem, and the server still healthy.

One tiny-model server with small limits, an API key and /metrics behind it; the bytes go out
as written (httpx with raw content, or a socket where httpx would add a Content-Length).
"""

from __future__ import annotations

import http.client
import re
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import _TINY_ENGINE, API_KEY, TINY_NAME
from live_server import start_server

MAX_BODY = 65536
MAX_DEPTH = 16
AUTH = {"authorization": f"Bearer {API_KEY}"}
JSON = {"content-type": "application/json", **AUTH}


@pytest.fixture(scope="module")
def guarded(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--api-key", API_KEY]
    args += ["--max-request-body-bytes", str(MAX_BODY), "--max-json-depth", str(MAX_DEPTH)]
    args += ["--metrics-require-api-key", *_TINY_ENGINE]
    yield from start_server(args, log)


def _error(response: httpx.Response, status: int, code: str, *needles: str) -> str:
    """The error's message, after checking the status, OpenAI's error body, the code and that the
    message holds each needle."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    for needle in needles:
        assert needle in error["message"], error
    return error["message"]


def _healthy(server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def _raw(server, request: bytes) -> httpx.Response:
    """Send `request` as is on a fresh connection; the answer as an httpx.Response."""
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())


def test_a_body_under_the_limits_reaches_the_route(guarded):
    body = {"prompt": [[1, 2]] * 100, "max_tokens": 2}
    response = httpx.post(f"{guarded.url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 100


def test_content_length_over_the_limit_is_413(guarded):
    body = b'{"prompt": "' + b"x" * MAX_BODY + b'"}'
    response = httpx.post(f"{guarded.url}/v1/completions", content=body, headers=JSON)
    message = _error(response, 413, "request_too_large", str(MAX_BODY), "--max-request-body-bytes")
    assert f"Content-Length {len(body)}" in message
    _healthy(guarded)


def test_chunked_body_over_the_limit_is_413(guarded):
    # No Content-Length: the limit holds on the bytes received.
    chunk = b"x" * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 2))
    head = (
        b"POST /tokenize HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    response = _raw(guarded, head + b'11\r\n{"prompt": "xxxxx\r\n' + chunks + b"0\r\n\r\n")
    _error(response, 413, "request_too_large", f"more than {MAX_BODY} bytes", "--max-request-body-bytes")
    _healthy(guarded)


def test_a_chunked_body_within_the_limit_is_read(guarded):
    body = b'{"prompt": "hello there"}'
    head = (
        b"POST /tokenize HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    halves = body[:10], body[10:]
    response = _raw(guarded, head + b"".join(b"%x\r\n%s\r\n" % (len(h), h) for h in halves) + b"0\r\n\r\n")
    assert response.status_code == 200, response.text
    assert response.json()["count"] >= 1


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 30_000])
def test_json_nested_too_deep_is_400(guarded, levels):
    # The prompt's own array is one level, the enclosing object another.
    body = b'{"prompt": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    response = httpx.post(f"{guarded.url}/v1/completions", content=body, headers=JSON)
    message = _error(response, 400, "json_too_deep", f"at most {MAX_DEPTH}", "--max-json-depth")
    assert f"{levels} levels deep" in message
    _healthy(guarded)


def test_json_at_the_depth_limit_passes_the_guard(guarded):
    # Brackets inside strings do not count; /tokenize ignores the extra field.
    body = b'{"prompt": "' + b"[" * 100 + b'", "x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    response = httpx.post(f"{guarded.url}/tokenize", content=body, headers=JSON)
    assert response.status_code == 200 and response.json()["count"] == 100, response.text


def test_invalid_utf8_is_400_with_its_offset(guarded):
    body = b'{"prompt": "caf\xe9"}'
    response = httpx.post(f"{guarded.url}/v1/chat/completions", content=body, headers=JSON)
    _error(response, 400, "invalid_utf8", "not valid UTF-8", "0xe9", "offset 15")
    _healthy(guarded)


def test_raw_nul_byte_is_400(guarded):
    body = b'{"prompt": "a\x00b"}'
    response = httpx.post(f"{guarded.url}/v1/completions", content=body, headers=JSON)
    _error(response, 400, "nul_byte", "NUL byte at offset 13")
    _healthy(guarded)


@pytest.mark.parametrize(
    "content_type, body",
    [("text/plain", b'{"prompt": "hi"}'), ("application/x-www-form-urlencoded", b"prompt=hi")],
)
def test_wrong_content_type_is_415(guarded, content_type, body):
    headers = {"content-type": content_type, **AUTH}
    response = httpx.post(f"{guarded.url}/v1/completions", content=body, headers=headers)
    _error(response, 415, "unsupported_media_type", "application/json", repr(content_type))
    _healthy(guarded)


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/v1/completions", {"POST"}),
        ("PUT", "/v1/chat/completions", {"POST"}),
        ("DELETE", "/tokenize", {"POST"}),
        # FastAPI's GET routes answer no HEAD.
        ("POST", "/v1/models", {"GET"}),
        ("PATCH", "/health", {"GET"}),
    ],
)
def test_unsupported_method_is_405_with_allow(guarded, method, path, allowed):
    response = httpx.request(method, f"{guarded.url}{path}", json={"prompt": "hi"}, headers=AUTH)
    message = _error(response, 405, "method_not_allowed", f"{method} {path}")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
    assert all(m in message for m in allowed), message
    _healthy(guarded)


def test_metrics_needs_the_key_and_health_version_do_not(guarded):
    _error(httpx.get(f"{guarded.url}/metrics"), 401, "invalid_api_key", "Authorization: Bearer")
    metrics = httpx.get(f"{guarded.url}/metrics", headers=AUTH)
    assert metrics.status_code == 200 and "pagedllm:" in metrics.text
    assert httpx.get(f"{guarded.url}/version").status_code == 200
    _healthy(guarded)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_their_assets_from_the_server(guarded, page):
    # No key: the pages and their assets hold no data, and /openapi.json is open too.
    html = httpx.get(f"{guarded.url}{page}")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "http://" not in html.text and "https://" not in html.text
    assets = re.findall(r'<(?:script|link)[^>]*\b(?:src|href)="([^"]+)"', html.text)
    assert assets, html.text
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = httpx.get(f"{guarded.url}{url}")
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] in {
            "text/javascript",
            "application/javascript",
            "text/css",
            "image/png",
        }, (url, asset.headers["content-type"])
    schema = httpx.get(f"{guarded.url}/openapi.json")
    assert schema.status_code == 200
    assert not {"/docs", "/redoc"} & set(schema.json()["paths"])
    assert not any(path.startswith("/docs-assets") for path in schema.json()["paths"])
