"""Prompt construction and prefix text: the messages a question becomes, and back from ids.

Both sampling phases and the written mixture use these functions. A prefix example's training
prompt is the question followed by the recipe's instruction; a full-trace example's is the plain
question. Prefixes are *sampled* with the plain question by default (the paper: the first L
tokens of the model's normal answer); ``instruction_markers`` / ``echo_share`` measure how often
samples repeat the instruction's wording, which is what sampling under the instruction causes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

Message = dict[str, str]


def messages(question: str, instruction: str | None, system_prompt: str | None) -> list[Message]:
    """Chat messages for a question; ``instruction`` None gives the plain (full-trace) prompt."""
    content = question if instruction is None else f"{question}\n\n{instruction}"
    msgs: list[Message] = []
    if system_prompt:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": content})
    return msgs


def encode_prompt(tokenizer: Any, msgs: list[Message]) -> list[int]:
    """Token ids of the chat-templated prompt, ending with the assistant turn's opening."""
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    # The template already wrote BOS and role markers: add no special tokens twice.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_text(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stable_prefix(tokenizer: Any, ids: list[int]) -> tuple[list[int], str]:
    """Shorten ``ids`` until their text re-tokenises to exactly them and has no trailing space.

    The trainer re-tokenises the completion text, and chat templates may trim white space, so a
    prefix is only kept as far as text and token ids mean the same thing. Usually nothing is
    dropped; a prefix cut inside a multi-byte character or a merged word loses its last token.
    """
    ids = list(ids)
    while ids:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if text == text.rstrip() and encode_text(tokenizer, text) == ids:
            return ids, text
        ids.pop()
    return [], ""


# Function words: a marker made only of these ("of the", "you would") says nothing about echo.
_STOPWORDS = frozenset(
    "a an and are as at be but by do does for from how i if in is it its not of on only or so "
    "that the this to was we what when which will with would you your".split()
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def instruction_markers(instruction: str) -> list[str]:
    """The instruction's content-word bigrams ("opening step", "first thing"): echo markers."""
    found: list[str] = []
    for clause in re.split(r"[.,:;!?()]", instruction.lower()):
        words = _WORD.findall(clause)
        for a, b in zip(words, words[1:], strict=False):
            if a not in _STOPWORDS and b not in _STOPWORDS and f"{a} {b}" not in found:
                found.append(f"{a} {b}")
    return found


def echoes(text: str, markers: Iterable[str]) -> bool:
    """Whether ``text`` repeats any marker (case and white space folded)."""
    folded = " ".join(_WORD.findall(text.lower()))
    return any(re.search(rf"\b{re.escape(m)}\b", folded) for m in markers)


def echo_share(texts: list[str], markers: list[str]) -> float | None:
    """Share of ``texts`` that echo a marker; None for no texts."""
    if not texts:
        return None
    return sum(echoes(t, markers) for t in texts) / len(texts)
