"""`pagedllm chat`: a terminal conversation that streams the reply as it is generated."""

from __future__ import annotations

import sys

from pagedllm.config import EngineConfig
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.entrypoints.chat_utils import apply_chat_template
from pagedllm.sampling_params import SamplingParams

_HELP = "Type a message and press Enter. /reset clears the conversation, /exit (or Ctrl-D) quits."


def run_chat(config: EngineConfig, params: SamplingParams, system: str | None) -> int:
    engine = LLMEngine(config)
    apply_chat_template(engine.tokenizer, [{"role": "user", "content": "hi"}])  # fail early without template
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print(_HELP, file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = _stream_reply(engine, history, params)
        history.append({"role": "assistant", "content": reply})


def _stream_reply(engine: LLMEngine, history: list[dict[str, str]], params: SamplingParams) -> str:
    token_ids = apply_chat_template(engine.tokenizer, history)
    request_id = engine.new_request_id()
    engine.add_request(request_id, {"prompt_token_ids": token_ids}, params, output_kind="delta")
    pieces = []
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                delta = output.outputs[0].text
                pieces.append(delta)
                print(delta, end="", flush=True)
    except KeyboardInterrupt:
        engine.abort_request(request_id)
    print()
    return "".join(pieces)
