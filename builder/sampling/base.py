"""The sampling interface shared by every backend.

The pipeline hands a backend a batch of already-templated prompts (token ids) and gets back,
per prompt, ``n`` samples with their generated token ids, decoded text, finish reason and
cumulative log-probability. Backends live in their own modules (``vllm.py``, ``hf.py``) and
import their engines lazily, so that this module (and ``upft-build --help``) stays light.
"""

from __future__ import annotations

import hashlib
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One sampled continuation. ``token_ids`` excludes the stop token that ended it."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_tokens)
    cumulative_logprob: float | None


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings common to both backends (resolved: no None left).

    Both backends apply exactly these and nothing else: no engine or generation-config default
    may slip in, so the same resolved recipe decodes the same way on vLLM and transformers.
    """

    temperature: float
    top_p: float
    top_k: int  # 0 or -1 means disabled
    seed: int
    repetition_penalty: float = 1.0  # 1.0 means disabled


@dataclass(frozen=True)
class EngineOptions:
    """Engine construction options taken from the recipe's ``model`` section."""

    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    cpu_kvcache_gib: int = 2
    kv_block_size: int | None = None
    compile: str = "auto"  # "auto" | "compiled" | "eager" (vLLM only; see sampling.vllm)
    token_bound: int | None = None  # the build's planned token budget, for compile="auto"


ProgressFn = Callable[[int, int], None]  # (prompts finished, tokens generated) increments


def seed_for(seed: int, prompts: Sequence[Sequence[int]]) -> int:
    """The seed of one ``generate`` call: a function of the recipe seed and the prompts alone.

    Both backends reseed their random stream with it right before sampling a shard, so a
    shard's samples do not depend on what was sampled before it: a resumed build, or shards run
    in another order, give the same samples as an uninterrupted build.
    """
    crc = 0
    for p in prompts:
        crc = zlib.crc32(b"".join(int(t).to_bytes(4, "little") for t in p), crc)
    return (seed * 1_000_003 + crc) % (2**63)


def request_seed(seed: int, key: str, sample: int) -> int:
    """The seed of one sample on engines that seed every request (``seeding: per_request``).

    ``key`` names the prompt within the build: the phase (which carries the try) and the
    question id (``executor.ShardRequest.seed_keys``); ``seed`` is the phase's seed (the recipe
    seed, or a full-trace try's own). The result depends on nothing else, so a sample is the
    same whichever shard, replica or tensor-parallel layout it ran in.
    """
    digest = hashlib.sha256(f"{seed}:{key}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any engine's seed type


def request_seeds(
    seed: int, keys: Sequence[str] | None, call_seed: int, prompts: int, n: int
) -> list[list[int]]:
    """Per prompt, the seeds of its ``n`` samples. Without ``keys`` (a call from outside an
    executor) the prompts are named by their position in the call and the call's own seed
    (:func:`seed_for`), which keeps the per-call guarantee: same call, same samples."""
    if keys is None:
        keys = [f"call-{call_seed}/{i}" for i in range(prompts)]
    elif len(keys) != prompts:
        raise ValueError(f"{len(keys)} seed keys for {prompts} prompts")
    return [[request_seed(seed, key, j) for j in range(n)] for key in keys]


class Sampler(ABC):
    """A loaded engine that samples continuations for templated prompts."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The engine's Hugging Face tokenizer (used for templating and decoding)."""

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        """Sample ``n`` continuations of at most ``max_tokens`` for every prompt, in order."""

    def generate_keyed(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        keys: Sequence[str] | None,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        """:meth:`generate`, told each prompt's place in the build (``keys``: phase and question
        id, see :func:`request_seed`). Engines that seed every request use the keys; the
        others (per-call seeding) ignore them, which is what this default does."""
        return self.generate(prompts, n, max_tokens, progress)

    def engine_info(self) -> dict[str, Any]:
        """Engine settings chosen at load time that can change output (for the manifest)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine (processes, memory)."""

    @property
    def freed_by_exit(self) -> bool:
        """True if ending this process frees all the engine holds (no other process, nothing
        outside it), so a process about to exit may skip :meth:`close`."""
        return False

    def stop_token_ids(self) -> set[int]:
        """Token ids that end a turn: eos plus the template's end-of-turn token if it has one."""
        return stop_token_ids(self.tokenizer)


def stop_token_ids(tok: Any) -> set[int]:
    """The end-of-turn ids of a tokenizer: eos plus the chat template's end-of-turn token."""
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>"):
        tid = tok.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return ids
