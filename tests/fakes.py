"""Test doubles for fast logic tests: a character-level tokenizer and a scripted sampler.

They go through the builder's real seam (``build(recipe, sampler=FakeSampler(...))``), so every
stage after sampling (voting, mixture, writer, manifest, card) runs for real in milliseconds.
The real engines stay in the end-to-end tests; nothing here stands in for them there.

The tokenizer maps each character to one id (``ord(c) + OFFSET``), so decode(encode(x)) == x and
a "token" is a character: lengths and cuts in tests are easy to reason about. The end-of-turn
token is its own id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from builder.sampling.base import ProgressFn, Sample, Sampler, SamplingSettings

OFFSET = 10
EOT = "<|im_end|>"
EOT_ID = 2


class CharTokenizer:
    """Just enough of a Hugging Face tokenizer for the builder: one id per character."""

    eos_token_id = EOT_ID
    eos_token = EOT
    unk_token_id = 0
    pad_token_id = 1
    chat_template = "chatml"

    def apply_chat_template(
        self, msgs: list[dict[str, str]], add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{EOT}\n" for m in msgs)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def encode(self, text: str) -> list[int]:
        return [ord(c) + OFFSET for c in text]

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, list):
            return {"input_ids": [self.encode(t) for t in text]}
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i - OFFSET) for i in ids if i >= OFFSET)

    def batch_decode(
        self,
        batch: Sequence[Sequence[int]],
        skip_special_tokens: bool = False,
    ) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def convert_tokens_to_ids(self, token: str) -> int:
        return EOT_ID if token == EOT else self.unk_token_id


# A script answers (prompt text, sample index, seed) with the whole answer the model "writes".
Script = Callable[[str, int, int], str]


class FakeSampler(Sampler):
    """A scripted sampler: answers come from ``script``; ``max_tokens`` cuts them (finish
    reason "length"), otherwise they end with the end-of-turn token ("stop")."""

    def __init__(self, script: Script, seed: int = 0) -> None:
        super().__init__(SamplingSettings(0.6, 1.0, 0, seed, 1.0))
        self.script = script
        self._tok = CharTokenizer()
        self.calls: list[dict[str, Any]] = []

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        self.calls.append(
            {
                "prompts": [self._tok.decode(p) for p in prompts],
                "n": n,
                "max_tokens": max_tokens,
                "seed": self.settings.seed,
            }
        )
        out = []
        for p in prompts:
            text = self._tok.decode(p)
            samples = []
            for j in range(n):
                answer = self.script(text, j, self.settings.seed)
                ids = self._tok.encode(answer)
                if len(ids) > max_tokens:
                    ids, reason = ids[:max_tokens], "length"
                else:
                    reason = "stop"
                samples.append(Sample(ids, self._tok.decode(ids), reason, -float(len(ids))))
            out.append(samples)
            if progress is not None:
                progress(1, sum(len(s.token_ids) for s in samples))
        return out


def fake_model_dir(root: Path, generation_config: dict[str, Any] | None = None) -> Path:
    """A folder that resolves as a local model (config.json), with an optional generation
    config; no weights: the fake sampler never loads it."""
    folder = root / "fake-model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "fake"}))
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config))
    return folder


def question(prompt_text: str) -> str:
    """The user message of a ChatML prompt rendered by :class:`CharTokenizer`."""
    return prompt_text.split("<|im_start|>user\n", 1)[1].split(EOT, 1)[0]
