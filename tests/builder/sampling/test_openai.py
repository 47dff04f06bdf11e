"""Tests of builder.sampling.openai: the probe, the request bodies, and answers read into samples
(server ids or re-tokenised text), against the scripted server of ``tests/served/scripted.py``.

Fast logic tests; the same code against the real vLLM server is in ``test_served_executor.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from builder.sampling.base import SamplingSettings
from builder.sampling.openai import ServedEngine, ServedSpec, request_seed
from tests.fakes import EOT_ID, OFFSET, CharTokenizer
from tests.served.scripted import ScriptedServer

SETTINGS = SamplingSettings(temperature=0.6, top_p=0.9, top_k=20, seed=0, repetition_penalty=1.1)
CHAT = (("user", "What is 2 + 3?"),)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.stop()


def _engine(server: ScriptedServer, **spec: Any) -> ServedEngine:
    base = {"base_url": server.base_url, "served_name": "scripted", **spec}
    return ServedEngine(ServedSpec(**base), CharTokenizer)


def _run(engine: ServedEngine, coro: Any) -> Any:
    async def go() -> Any:
        try:
            return await coro
        finally:
            await engine.aclose()

    return asyncio.run(go())


def _probe_and_ask(engine: ServedEngine, n: int = 2, max_tokens: int = 64, seed: int = 7) -> Any:
    async def go() -> Any:
        await engine.probe()
        return await engine.ask("prefix", [11, 12], CHAT, n, max_tokens, SETTINGS, seed)

    return _run(engine, go())


def test_request_seeds_depend_on_seed_question_and_sample_only() -> None:
    assert request_seed(0, "q1", 0) == request_seed(0, "q1", 0)
    seeds = {request_seed(s, q, j) for s in (0, 1) for q in ("q1", "q2") for j in (0, 1)}
    assert len(seeds) == 8
    assert all(0 <= x < 2**31 for x in seeds)


def test_the_probe_reads_the_model_entry_version_and_capabilities(
    server: ScriptedServer,
) -> None:
    engine = _engine(server)
    info = _run(engine, engine.probe())
    assert info.model == {"id": "scripted", "root": "/models/x", "max_model_len": 4096,
                          "owned_by": "scripted"}  # fmt: skip
    assert info.version == "9.9.9"
    assert (info.extras, info.token_ids, info.logprobs, info.n, info.seed) == (
        True,
        True,
        True,
        True,
        True,
    )
    assert info.seed_honoured is True
    # the probe pair: same body (seed included) twice
    assert len(server.bodies) == 2 and server.bodies[0] == server.bodies[1]
    assert server.bodies[0]["n"] == 2 and server.bodies[0]["max_tokens"] == 8


def test_a_server_that_ignores_seeds_and_n_is_recorded_so(server: ScriptedServer) -> None:
    server.honour_seed = False
    server.honour_n = False
    engine = _engine(server)
    info = _run(engine, engine.probe())
    assert info.n is False and info.seed is True and info.seed_honoured is False


def test_an_unknown_served_name_lists_what_the_server_has(server: ScriptedServer) -> None:
    engine = _engine(server, served_name="gpt-x")
    with pytest.raises(Exception, match=r"serves 'scripted', not 'gpt-x'; set model.served_name"):
        _run(engine, engine.probe())


def test_server_ids_are_used_and_the_stop_token_dropped(server: ScriptedServer) -> None:
    engine = _engine(server)
    answer = _probe_and_ask(engine)
    body = server.bodies[-1]
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert body["seed"] == 7 and body["n"] == 2 and body["return_token_ids"] is True
    assert body["stop_token_ids"] == [EOT_ID]
    assert (body["temperature"], body["top_p"], body["top_k"], body["repetition_penalty"]) == (
        0.6,
        0.9,
        20,
        1.1,
    )
    for j, sample in enumerate(answer.samples):
        text, ended = ScriptedServer.text_for(7 * 1000 + j, 64)
        assert sample.text == text
        assert sample.token_ids == [ord(c) + OFFSET for c in text]  # EOT_ID not kept
        assert sample.finish_reason == ("stop" if ended else "length")
        count = len(text) + (1 if ended else 0)
        assert sample.cumulative_logprob == pytest.approx(-0.1 * count * (count + 1) / 2)
    assert engine.token_source() == "server"
    assert answer.completion_tokens == sum(len(s.token_ids) + 1 for s in answer.samples)


def test_text_only_answers_are_tokenised_again_and_cut_to_max_tokens(
    server: ScriptedServer,
) -> None:
    server.ids = False
    engine = _engine(server)
    answer = _probe_and_ask(engine, max_tokens=5, seed=3)
    for j, sample in enumerate(answer.samples):
        text, _ = ScriptedServer.text_for(3 * 1000 + j, 5)
        assert sample.token_ids == [ord(c) + OFFSET for c in text][:5]
        assert sample.text == text[:5]
    assert engine.token_source() == "retokenized"
    assert engine.describe()["samples_by_token_source"] == {"retokenized": 2}


def test_a_strict_server_gets_no_extras_and_refuses_top_k(server: ScriptedServer) -> None:
    server.strict = True  # a hosted API: unknown fields are errors
    engine = _engine(server)
    info = _run(engine, engine.probe())
    assert info.extras is False and info.token_ids is False and info.seed is True
    assert engine.unsendable(SETTINGS) == ["top_k=20", "repetition_penalty=1.1"]
    neutral = SamplingSettings(0.6, 0.9, 0, 0, 1.0)
    assert engine.unsendable(neutral) == []
    body = engine.body("prefix", [1], CHAT, 1, 4, neutral, 5)
    assert set(body) == {
        "model",
        "messages",
        "n",
        "max_tokens",
        "temperature",
        "top_p",
        "logprobs",
        "top_logprobs",
        "seed",
    }


def test_fields_left_to_the_server_are_not_sent(server: ScriptedServer) -> None:
    engine = _engine(server, unsent=frozenset({"top_p", "top_k", "repetition_penalty"}))
    _probe_and_ask(engine)
    body = server.bodies[-1]
    assert "top_p" not in body and "top_k" not in body and "repetition_penalty" not in body
    sent = engine.describe()["sent"]["prefix"]
    assert sent["temperature"] == 0.6 and "top_p" not in sent
    assert sent["seed"].startswith("per request")


def test_the_completions_endpoint_sends_token_ids(server: ScriptedServer) -> None:
    engine = _engine(server, endpoint="completions")
    answer = _probe_and_ask(engine)
    body = server.bodies[-1]
    assert body["prompt"] == [11, 12] and "messages" not in body
    assert body["logprobs"] == 0
    assert len(answer.samples) == 2


def test_a_short_answer_is_an_error_naming_the_endpoint(server: ScriptedServer) -> None:
    engine = _engine(server)

    async def go() -> Any:
        await engine.probe()
        server.honour_n = False  # changes its mind after the probe
        return await engine.ask("prefix", [1], CHAT, 3, 8, SETTINGS, 1)

    with pytest.raises(Exception, match=r"/v1/chat/completions returned 1 choice\(s\) for n = 3"):
        _run(engine, go())
