"""The OpenAI-compatible HTTP server (`pagedllm serve`).

server.py builds the FastAPI app and runs it; protocol.py parses and validates request bodies;
completions.py and chat.py serve the two generation endpoints; logprobs.py formats logprobs;
streaming.py holds SSE, stream merging and disconnect handling; errors.py the OpenAI error body.
"""
