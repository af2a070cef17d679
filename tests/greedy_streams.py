"""A streamed greedy completion as `numerics.assert_greedy_match` compares it: the tokens, each
position's top-2 tokens, and the top-2 with their logprobs (shared by the server load tests)."""

from __future__ import annotations

import openai


async def stream_greedy(
    client: openai.AsyncOpenAI, model: str, prompt: list[int], max_tokens: int
) -> tuple[list[str], list[list[str]], list[list[tuple[str, float]]]]:
    tokens, top2, ranked_top2 = [], [], []
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        logprobs=2,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        lp = chunk.choices[0].logprobs
        if lp is None:
            continue
        for token, top in zip(lp.tokens, lp.top_logprobs):
            tokens.append(token)
            ranked = sorted(top.items(), key=lambda kv: -kv[1])[:2]
            top2.append([t for t, _ in ranked])
            ranked_top2.append(ranked)
    return tokens, top2, ranked_top2
