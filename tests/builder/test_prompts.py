"""Prompt construction and instruction-echo measurement (builder.prompts)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from builder.prompts import (
    echo_mask,
    echoes,
    encode_batch,
    encode_prompt,
    instruction_markers,
    messages,
    stable_prefixes,
)
from builder.recipe import DEFAULT_INSTRUCTION
from tests.fakes import CharTokenizer


def test_messages_plain_and_with_instruction():
    assert messages("Q?", None, None) == [{"role": "user", "content": "Q?"}]
    assert messages("Q?", "Only start.", "Sys") == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Q?\n\nOnly start."},
    ]


def test_encode_prompt_ends_with_the_assistant_turn():
    tok = CharTokenizer()
    ids = encode_prompt(tok, messages("Q?", None, None))
    assert tok.decode(ids) == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_markers_are_content_bigrams_within_a_clause():
    assert instruction_markers(DEFAULT_INSTRUCTION) == [
        "whole problem",
        "opening step",
        "first thing",
        "work out",
        "final answer",
    ]
    # No bigram across a full stop, none made of function words only.
    assert instruction_markers("Solve it. Then stop here; of the") == ["then stop", "stop here"]


def test_echo_mask_marks_texts_that_repeat_a_marker():
    markers = ["first thing", "opening step"]
    assert echoes("The FIRST   thing is x", markers)
    assert not echoes("firstthing", markers)
    texts = ["The first thing", "add 2", "my opening step"]
    assert echo_mask(texts, markers).tolist() == [True, False, True]
    assert echo_mask(pa.array(texts), markers).tolist() == [True, False, True]
    assert echo_mask([], markers).tolist() == [] and not echo_mask(texts, []).any()


def test_echo_mask_equals_echoes_on_every_text():
    # The fast filter must never drop a text echoes() would count: case, the two non-ASCII
    # letters that lower-case to ASCII (dotted I, Kelvin sign), apostrophes, separators.
    markers = instruction_markers(DEFAULT_INSTRUCTION) + ["abi step", "don't stop", "t stop"]
    words = ["first", "FIRST", "thing", "THİNG", "wor\u212a", "out", "work", "ABİ", "step"]
    words += ["don't", "DON'T", "stop", "final", "answer", "Opening", "whole", "problem", "xé"]
    separators = [" ", "  ", ", ", "\n", "", "'", "-", " 2 ", "é"]
    rng = random.Random(3)
    texts = [
        "".join(rng.choice(words) + rng.choice(separators) for _ in range(rng.randint(0, 6)))
        for _ in range(3000)
    ]
    texts += ["ABİ step", "wor\u212a out", "first, thing", "first2thing", "don't stop"]
    got = echo_mask(texts, markers)
    expected = [echoes(t, markers) for t in texts]
    assert got.tolist() == expected
    assert 100 < sum(expected) < 2900  # both outcomes are common


class MergingTokenizer:
    """Greedy longest-match over a few pieces: "a" "b" decode to "ab", which encodes to the
    single piece "ab", so not every id sequence survives a round trip (as with real BPE)."""

    pieces = ["a", "b", "ab", "abc", "c", " ", " a", "\n"]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def encode(self, text: str) -> list[int]:
        out = []
        while text:
            best = max((p for p in self.pieces if text.startswith(p)), key=len)
            out.append(self.pieces.index(best))
            text = text[len(best) :]
        return out

    def __call__(self, texts: Any, add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(texts, list):
            return {"input_ids": [self.encode(t) for t in texts]}
        return {"input_ids": self.encode(texts)}


def stable_prefix(tokenizer: Any, ids: list[int]) -> tuple[list[int], str]:
    """The rule, one prefix at a time: drop the last token until the text re-tokenises to
    exactly the ids and has no trailing white space (the reference for the batched version)."""
    ids = list(ids)
    while ids:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        again = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if text == text.rstrip() and again == ids:
            return ids, text
        ids.pop()
    return [], ""


def test_stable_prefixes_equal_the_one_prefix_rule():
    tok = MergingTokenizer()
    rng = np.random.default_rng(5)
    prefixes = [
        rng.integers(0, len(tok.pieces), size=rng.integers(0, 9)).tolist() for _ in range(500)
    ]
    ids, texts = stable_prefixes(tok, prefixes)
    expected = [stable_prefix(tok, p) for p in prefixes]
    assert list(zip(ids, texts, strict=True)) == expected
    shortened = sum(len(i) < len(p) for i, p in zip(ids, prefixes, strict=True))
    assert 100 < shortened < 450 and any(not i for i in ids)


def test_stable_prefixes_keep_what_round_trips():
    tok = CharTokenizer()
    ids, texts = stable_prefixes(tok, [tok.encode("ab cd"), tok.encode("ab "), [], tok.encode("x")])
    assert texts == ["ab cd", "ab", "", "x"]
    assert ids == [tok.encode("ab cd"), tok.encode("ab"), [], tok.encode("x")]


@pytest.mark.slow
def test_encode_batch_takes_the_rust_route_with_the_same_ids(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2.path)
    texts = ["Ann has 3 pens.", " leading space", "naïve café\n\n", ""]
    assert encode_batch(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_batch(CharTokenizer(), ["ab"]) == [CharTokenizer().encode("ab")]


def test_too_long_finds_what_does_not_fit_and_encodes_only_long_texts():
    from builder.prompts import too_long
    from builder.sources import Question

    encoded: list[str] = []

    def prompt(q: Question) -> list[int]:
        encoded.append(q.id)
        return list(range(10 + len(q.text)))  # 10 template tokens, one per character

    qs = [Question("short", "x" * 20), Question("edge", "y" * 30), Question("long", "z" * 31)]
    skipped = too_long(iter(qs), prompt, context=48, reserve=8)  # 40 prompt tokens at most
    assert [q.id for q in skipped] == ["long"]
    # The empty question measures the template; "short" fits by its byte count alone.
    assert encoded == ["", "edge", "long"]
    assert list(too_long(qs, prompt, context=None, reserve=8)) == []


def test_model_context_from_the_recipe_or_the_model_config(tmp_path):
    import json

    from builder.prompts import model_context

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert model_context(None, str(tmp_path)) == 8192
    assert model_context(2048, str(tmp_path)) == 2048
    assert model_context(None, str(tmp_path / "absent")) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    assert model_context(None, str(tmp_path)) is None
