"""schemathesis hooks for test_openapi_contract.py (loaded by `st run` via SCHEMATHESIS_HOOKS).

`accepted_unless_semantic` replaces schemathesis's positive_data_acceptance check: a
schema-valid request gets a 2xx, or one of the 400s below, each a rule that JSON Schema cannot
state, with the reason beside it. No other rejection of valid data passes.
"""

from __future__ import annotations

import os
import re

import schemathesis

# Where each judged response's status goes (one line per schema-valid case), so the test can
# see that this check ran and on how many cases.
LOG = os.environ.get("CONTRACT_CHECK_LOG")

SEMANTIC_400S = {
    r"exceeds the context length|but the context holds|tokens of KV cache": (
        "prompt, or prompt plus max_tokens, longer than the context: the schema bounds characters "
        "and list lengths, not the tokens a text becomes"
    ),
    r"chat template failed to render": "the chat template's own checks (Jinja raise_exception)",
    r"tool_choice needs tools|is not among the tools": "tool_choice must name a tool the request lists",
    r"min_tokens \(\d+\) must be <= max_tokens": "min_tokens <= max_tokens (cross-field)",
    r"best_of=\d+ is not supported": "best_of must equal n (cross-field)",
    r"stream_options can only be set when stream is true": "stream_options needs stream (cross-field)",
    r"top_logprobs needs logprobs": "top_logprobs needs logprobs (cross-field)",
    r"continue_final_message and add_generation_prompt": "the two cannot both be true (cross-field)",
    r"max_tokens must be at least 1 \(0 is allowed only with echo\)": "max_tokens 0 needs echo (cross-field)",
    r"give one output constraint, not several": "one of response_format / structured_outputs / guided_*",
    r"cannot be combined with response_format": "a forced tool call excludes another constraint",
    r"outside the vocabulary": "logit_bias keys are strings: a schema puts no numeric bound on them",
    r"needs the server started with --enable-auto-tool-choice": "tool_choice auto depends on server flags",
    r"two tools are named": "tool names must be unique (uniqueItems cannot key on a field)",
    r"structured outputs need exactly one of": "structured_outputs holds exactly one constraint",
    # What xgrammar cannot compile or enforce: any string is a valid regex or grammar field, any
    # object a valid schema field, whatever it says.
    r"^invalid (json|regex|grammar|choice|structural_tag|json_object) constraint": (
        "a regex, grammar or JSON schema xgrammar cannot compile"
    ),
    r"cannot be enforced": "a JSON-schema keyword or format decoding cannot enforce",
    r"the JSON schema is not valid JSON|a JSON schema is an object|the JSON schema at .* not an object": (
        "guided_json given as a string must hold a JSON schema"
    ),
}


@schemathesis.check
def accepted_unless_semantic(ctx, response, case):
    """Schema-valid data gets a 2xx, or one of SEMANTIC_400S."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if LOG:
        with open(LOG, "a") as log:
            log.write(f"{response.status_code}\n")
    if response.status_code < 400:
        return None
    message = ""
    if response.status_code == 400:
        message = response.json().get("error", {}).get("message", "")
        if any(re.search(pattern, message) for pattern in SEMANTIC_400S):
            return None
    raise AssertionError(
        f"schema-valid request rejected with {response.status_code}: {message or response.text[:300]}"
    )
