"""Every error is an OpenAI error body with the right status; the SDK raises the matching class."""

from __future__ import annotations

import httpx
import openai
import pytest

MODEL = "smollm2-135m-instruct"
TINY = "tiny"
API_KEY = "test-secret-key"
USER = [{"role": "user", "content": "hi"}]


def _error(response: httpx.Response, status: int, param: str | None = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param != "":
        assert error["param"] == param, error
    return error


def _bad_request(exc_info, param: str) -> str:
    assert exc_info.value.status_code == 400
    assert exc_info.value.body["param"] == param, exc_info.value.body
    return exc_info.value.body["message"]


def test_prompt_longer_than_the_context(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=[5] * 9000, max_tokens=1)
    assert "8192" in _bad_request(exc, "prompt")


def test_max_tokens_beyond_the_context(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=100_000)
    assert "at most" in _bad_request(exc, "max_tokens")
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=100_000)
    _bad_request(exc, "max_tokens")


@pytest.mark.parametrize("prompt", ["", [], [[]], ["ok", ""]])
def test_empty_prompts(client, prompt):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=prompt)
    _bad_request(exc, "prompt")


def test_token_ids_outside_the_vocabulary(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=[1, 2, 49152])
    assert "[0, 49152)" in _bad_request(exc, "prompt")
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=[1, -1])
    _bad_request(exc, "prompt")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("temperature", -1, "greater than or equal to 0"),
        ("temperature", "hot", "number"),
        ("top_p", 1.5, "less than or equal to 1"),
        ("n", 0, "greater than or equal to 1"),
        ("logprobs", 21, "less than or equal to 20"),
        ("presence_penalty", 3, "less than or equal to 2"),
        ("seed", 2**70, "less than or equal to"),
        ("stop", 5, ""),
        ("logit_bias", {"x": 1}, "token ids"),
        ("suffix", "tail", "not supported"),
        ("best_of", 3, "equal to n"),
        ("stream_options", {"include_usage": True}, "stream"),
        ("min_tokens", -1, "greater than or equal to 0"),
    ],
)
def test_invalid_fields_name_the_field(client, field, value, needle):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body={field: value})
    assert needle in _bad_request(exc, field)


@pytest.mark.parametrize(
    "field, value",
    [
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "xml"}),
        ("top_logprobs", 21),
        ("messages", []),
    ],
)
def test_unsupported_chat_fields(client, field, value):
    body = {"messages": USER, "logprobs": True, field: value}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, max_tokens=2, **body)
    _bad_request(exc, field)


def test_non_text_content_parts_are_rejected(client):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=messages)
    _bad_request(exc, "messages.0.content.0")


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="gpt-4", prompt="hi")
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=USER)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


@pytest.mark.parametrize(
    "content, headers",
    [
        (b"{not json", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b'"prompt"', {"content-type": "application/json"}),
        (b'{"prompt": "hi", "temperature": NaN}', {"content-type": "application/json"}),
        (b"\xff\xfe\xfd", {"content-type": "application/json"}),
        (b"[" * 50_000 + b"]" * 50_000, {"content-type": "application/json"}),
    ],
)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_malformed_bodies_are_400(server, path, content, headers):
    _error(httpx.post(server.url + path, content=content, headers=headers), 400, None)


@pytest.mark.parametrize(
    "content, content_type",
    [(b"prompt=hi", "application/x-www-form-urlencoded"), (b'{"prompt": "hi"}', "text/plain")],
)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_bodies_that_are_not_json_are_415(server, path, content, content_type):
    response = httpx.post(server.url + path, content=content, headers={"content-type": content_type})
    assert "application/json" in _error(response, 415, None)["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": {"a": 1}},
        {"prompt": [1, "a"]},
        {"prompt": [True]},
        {"prompt": "hi", "max_tokens": "many"},
        {"prompt": "hi", "max_tokens": 0},
        {"prompt": "hi", "max_tokens": -3},
        {"prompt": "hi", "stop_token_ids": [10**9]},
        {"prompt": "hi", "prompt_logprobs": 50},
        {"prompt": "hi", "top_k": -5},
        {"prompt": "hi", "stream": "yes please"},
        {"prompt": "hi", "cache_salt": ""},
        {"prompt": "hi", "logit_bias": {"5": 1000}},
        {"messages": "hi"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": USER, "n": 10**6},
        {"messages": USER, "chat_template_kwargs": {"tokenize": True}},
        {"messages": USER, "max_completion_tokens": 0},
    ],
)
def test_no_input_yields_422_or_500(server, body):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    error = _error(httpx.post(server.url + path, json=body), 400)
    assert error["param"], error


def test_unknown_routes_and_methods(server):
    _error(httpx.get(f"{server.url}/v2/nothing"), 404, None)
    _error(httpx.post(f"{server.url}/v1/embeddings", json={}), 404, None)
    not_allowed = httpx.get(f"{server.url}/v1/completions")
    _error(not_allowed, 405, None)
    assert not_allowed.headers["allow"] == "POST"
    _error(httpx.post(f"{server.url}/detokenize", json={"tokens": [10**9]}), 400, "tokens")


def test_api_key_is_required_when_set(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client().models.list()
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="wrong").completions.create(model=TINY, prompt="hi")
    _error(httpx.post(f"{keyed_server.url}/v1/completions", json={"prompt": "x"}), 401, None)
    _error(httpx.post(f"{keyed_server.url}/tokenize", json={"prompt": "x"}), 401, None)
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    good = keyed_server.client(api_key=API_KEY)
    assert good.models.list().data[0].id == TINY
    assert good.completions.create(model=TINY, prompt="The quick", max_tokens=3).usage.completion_tokens >= 1


def test_chat_without_a_template_is_a_clear_400(keyed_server):
    with pytest.raises(openai.BadRequestError) as exc:
        keyed_server.client(api_key=API_KEY).chat.completions.create(model=TINY, messages=USER)
    assert "chat template" in _bad_request(exc, "messages")


def test_chat_template_flag_enables_chat(templated_server):
    client = templated_server.client()
    out = client.chat.completions.create(model=TINY, messages=USER, max_tokens=3, temperature=0)
    assert out.choices[0].message.role == "assistant"
    tokens = httpx.post(f"{templated_server.url}/tokenize", json={"messages": USER}).json()
    assert out.usage.prompt_tokens == tokens["count"]


BIG_SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(9000)}}


@pytest.mark.parametrize(
    "route, field, value, needle",
    [
        ("completions", "n", 129, "less than or equal to 128"),
        ("completions", "stop", ["x"] * 65, "at most 64 items"),
        ("completions", "stop", "x" * 1025, "at most 1024 characters"),
        ("completions", "logprobs", 21, "less than or equal to 20"),
        ("completions", "prompt_logprobs", 21, "less than or equal to 20"),
        ("completions", "logit_bias", {str(i): 1 for i in range(4097)}, "at most 4096 items"),
        ("completions", "prompt", ["hi"] * 257, "at most 256 prompts"),
        ("completions", "prompt", [5] * 9000, "the context holds"),
        (
            "chat",
            "tools",
            [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)],
            "at most 128",
        ),
        (
            "chat",
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "s", "schema": BIG_SCHEMA}},
            "bytes",
        ),
        ("chat", "structured_outputs", {"regex": "a" * 300_000}, "bytes"),
        (
            "chat",
            "tools",
            [{"type": "function", "function": {"name": "f", "parameters": BIG_SCHEMA}}],
            "bytes",
        ),
    ],
)
def test_bounds_are_400s_naming_the_limit(server, route, field, value, needle):
    """Each bound on what one request may ask for: a 400 naming the field and the limit; the
    server answers /health afterwards."""
    if route == "completions":
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, field: value}
    else:
        body = {"model": MODEL, "messages": USER, "max_tokens": 2, field: value}
    url = f"{server.url}/v1/{'completions' if route == 'completions' else 'chat/completions'}"
    error = _error(httpx.post(url, json=body, timeout=60), 400)
    assert error["param"].split(".")[0] == field and needle in error["message"], error
    assert httpx.get(f"{server.url}/health").status_code == 200
