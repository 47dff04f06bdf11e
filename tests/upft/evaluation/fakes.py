"""A fake sampler for the fast logic tests of upft-eval (the real engines run in test_e2e.py).

It answers every plain prompt with "The answer is <gold>." for the questions named in
``right`` and with a wrong number otherwise; under the prefix instruction it stops after a few
tokens. Token ids are one per word, so token counts are exact and easy to assert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from builder.recipe import DEFAULT_INSTRUCTION
from builder.sampling.base import Sample, Sampler, SamplingSettings


class FakeTokenizer:
    eos_token_id = 0
    unk_token_id = None
    chat_template = "fake"

    # One vocabulary for the whole process, so that every fake tokenizer (a resumed run makes a
    # new one) gives a word the same id; ids are handed out in order, so two words never share
    # one (a hash of the word did, depending on PYTHONHASHSEED, and decoded the wrong word).
    ids: dict[str, int] = {}
    texts: dict[int, str] = {}

    def apply_chat_template(
        self, msgs: list[dict[str, str]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in msgs)
        return body + "<assistant>"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        ids = []
        for word in text.split():
            key = self.ids.setdefault(word, len(self.ids) + 1)  # 0 is the end-of-sequence id
            self.texts[key] = word
            ids.append(key)
        return {"input_ids": ids}

    def convert_tokens_to_ids(self, name: str) -> int | None:
        return None

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.texts[i] for i in ids)


class FakeSampler(Sampler):
    backend = "fake"

    def __init__(
        self,
        golds: dict[str, str],
        right: set[str],
        prefix_tokens: int = 4,
        long_answers: set[str] | None = None,
    ) -> None:
        super().__init__(SamplingSettings(0.0, 1.0, 0, 0))
        self._tok = FakeTokenizer()
        self.golds = golds  # question text -> gold
        self.right = right  # question texts answered correctly
        self.prefix_tokens = prefix_tokens
        self.long_answers = long_answers or set()
        self.calls: list[tuple[int, int, int]] = []

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def _question(self, prompt: list[int]) -> tuple[str, bool]:
        text = self._tok.decode(prompt)
        instructed = " ".join(DEFAULT_INSTRUCTION.split()[:-1]) in text
        for question in self.golds:
            if " ".join(question.split()[1:-1]) in text:
                return question, instructed
        raise AssertionError(f"unknown prompt {text!r}")

    def generate(
        self, prompts: Sequence[list[int]], n: int, max_tokens: int, progress: Any = None
    ) -> list[list[Sample]]:
        self.calls.append((len(prompts), n, max_tokens))
        out = []
        for prompt in prompts:
            question, instructed = self._question(prompt)
            if instructed:
                words = ["First,", "find", "the", "total", "number", "of", "items"]
                words = words[: self.prefix_tokens]
                reason = "stop"
            elif question in self.long_answers:
                words = ["step"] * max_tokens
                reason = "length"
            else:
                gold = self.golds[question] if question in self.right else "123456"
                words = ["So", "the", "answer", "is", f"{gold}."]
                reason = "stop"
            words = words[:max_tokens]
            text = " ".join(words)
            ids = self._tok(text)["input_ids"]
            out.append([Sample(ids, text, reason, -1.0) for _ in range(n)])
        return out
