"""A server-sent event stays one line for every line splitter a client may use."""

from __future__ import annotations

import json

import httpx

from pagedllm.entrypoints.openai.streaming import sse

# Token text a model can produce that Python's str.splitlines() breaks lines at, next to the
# characters JSON escapes anyway.
AWKWARD_TEXT = "a\u2028b\u2029c\x85d\ne\rf\x0bg\x0ch\x1ci\x1dj\x1ek\u00e9\U0001f600"


def test_an_event_with_unicode_line_separators_is_one_line_for_every_splitter():
    raw = sse({"choices": [{"index": 0, "text": AWKWARD_TEXT}]})
    assert isinstance(raw, bytes)  # written to the socket as it is
    event = raw.decode()
    assert event.endswith("\n\n")
    line = event[:-2]
    assert line.splitlines() == [line]  # what str.splitlines-style readers see
    assert list(httpx.Response(200, content=event.encode()).iter_lines()) == [line, ""]  # httpx's reader
    payload = json.loads(line[len("data: ") :])
    assert payload["choices"][0]["text"] == AWKWARD_TEXT
    assert "\u00e9" in line  # other non-ASCII text stays raw UTF-8
