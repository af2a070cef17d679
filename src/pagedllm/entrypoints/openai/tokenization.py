"""POST /tokenize and /detokenize (vLLM's extras): the served model's tokenizer over HTTP."""

from __future__ import annotations

from fastapi import Request

from pagedllm.entrypoints.chat_utils import apply_chat_template
from pagedllm.entrypoints.openai.body import parse_body, read_json_object
from pagedllm.entrypoints.openai.chat import add_generation_prompt, normalize_messages
from pagedllm.entrypoints.openai.context import ServingContext
from pagedllm.entrypoints.openai.errors import bad_request
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    TokenizeRequest,
)


async def tokenize(ctx: ServingContext, request: Request) -> dict:
    """`{prompt}` or `{messages}` to `{count, max_model_len, tokens}` (+ `token_strs` on request)."""
    req = parse_body(TokenizeRequest, await read_json_object(request))
    ctx.check_model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise bad_request("give exactly one of prompt (a string) or messages (a chat)", "prompt")
    if req.prompt is not None:
        add_special = req.add_special_tokens is not False
        tokens = ctx.tokenizer(req.prompt, add_special_tokens=add_special).input_ids
    else:
        tokens = apply_chat_template(
            ctx.tokenizer,
            normalize_messages(req.messages),
            chat_template=ctx.chat_template,
            add_generation_prompt=add_generation_prompt(req),
            continue_final_message=bool(req.continue_final_message),
            chat_template_kwargs=req.chat_template_kwargs,
        )
    response = {
        "count": len(tokens),
        "max_model_len": ctx.max_model_len,
        "tokens": tokens,
        "token_strs": None,
    }
    if req.return_token_strs:
        response["token_strs"] = ctx.tokenizer.convert_ids_to_tokens(tokens)
    return response


async def detokenize(ctx: ServingContext, request: Request) -> dict:
    """`{tokens}` to `{prompt}`."""
    req = parse_body(DetokenizeRequest, await read_json_object(request))
    ctx.check_model(req.model)
    bad = [t for t in req.tokens if not 0 <= t < ctx.vocab_size]
    if bad:
        raise bad_request(f"tokens must be ids in [0, {ctx.vocab_size}); got {bad[:5]}", "tokens")
    return {"prompt": ctx.tokenizer.decode(req.tokens)}
