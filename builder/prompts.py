"""Prompt construction and prefix text: the messages a question becomes, and back from ids.

Both sampling phases and the written mixture use these functions. A prefix example's training
prompt is the question followed by the recipe's instruction; a full-trace example's is the plain
question. Prefixes are *sampled* with the plain question by default (the paper: the first L
tokens of the model's normal answer); ``instruction_markers`` / ``echo_mask`` measure how often
samples repeat the instruction's wording, which is what sampling under the instruction causes.
``too_long`` finds the questions whose prompt would not fit the model's context, and
``stable_prefixes`` settles prefixes to token boundaries their text reproduces.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from builder.sources import Question

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


def stable_prefixes(tokenizer: Any, prefixes: list[list[int]]) -> tuple[list[list[int]], list[str]]:
    """Shorten each prefix until its text re-tokenises to exactly its ids and has no trailing
    white space; returns the ids and texts.

    The trainer re-tokenises the completion text, and chat templates may trim white space, so a
    prefix is only kept as far as text and token ids mean the same thing. Usually nothing is
    dropped; a prefix cut inside a multi-byte character or a merged word loses its last tokens.
    The rule is the one-prefix loop "decode, check, drop the last token" run for all prefixes at
    once: one batched decode and encode per round, each round over the prefixes not settled yet.
    """
    ids = [list(p) for p in prefixes]
    texts = [""] * len(ids)
    pending = [i for i, p in enumerate(ids) if p]
    while pending:
        decoded = decode_batch(tokenizer, [ids[i] for i in pending], skip_special_tokens=False)
        encoded = encode_batch(tokenizer, decoded)
        left = []
        for i, text, again in zip(pending, decoded, encoded, strict=True):
            if text == text.rstrip() and again == ids[i]:
                texts[i] = text
                continue
            ids[i].pop()
            if ids[i]:
                left.append(i)
        pending = left
    return ids, texts


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


@functools.lru_cache(maxsize=16)
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str] | None:
    if not markers:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(m) for m in markers) + r")\b")


def echoes(text: str, markers: Iterable[str]) -> bool:
    """Whether ``text`` repeats any marker (case and white space folded)."""
    pattern = _marker_pattern(tuple(markers))
    if pattern is None:
        return False
    return pattern.search(" ".join(_WORD.findall(text.lower()))) is not None


# The only characters besides A-Z whose str.lower() holds an ASCII letter (a scan of Unicode).
_LOWERS_TO_ASCII = {"\u0130": "i", "\u212a": "k"}


def echo_mask(texts: Any, markers: Sequence[str]) -> np.ndarray:
    """Per text (a list or an Arrow string array): whether it echoes a marker (:func:`echoes`).

    A text can only echo "a b" if it contains both words, whatever their case: a fast
    column-wise filter keeps those, and :func:`echoes` decides on them alone, so the result is
    exactly :func:`echoes` on every text.
    """
    import polars as pl

    column = pl.Series(texts, dtype=pl.String) if isinstance(texts, list) else pl.from_arrow(texts)
    assert isinstance(column, pl.Series)
    mask = np.zeros(len(column), dtype=bool)
    if not markers or not len(column):
        return mask
    folded = column
    if column.str.contains_any(list(_LOWERS_TO_ASCII)).any():
        for char, ascii_letter in _LOWERS_TO_ASCII.items():
            folded = folded.str.replace_all(char, ascii_letter, literal=True)
    has: dict[str, np.ndarray] = {}
    candidates = np.zeros(len(column), dtype=bool)
    for marker in markers:
        words = marker.split(" ")
        for word in words:
            if word not in has:
                found = folded.str.contains_any([word], ascii_case_insensitive=True)
                has[word] = found.fill_null(False).to_numpy()
        candidates |= np.logical_and.reduce([has[w] for w in words])
    where = np.flatnonzero(candidates)
    if where.size:
        values = column.gather(where).to_list()
        mask[where] = [echoes(t or "", markers) for t in values]
    return mask


def decode_batch(tokenizer: Any, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
    """``tokenizer.batch_decode``, straight through the Rust tokenizer when there is one.

    transformers' own loop converts every id of every sequence in Python first, which costs
    more than the decoding itself at millions of samples; the result is the same text.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return list(tokenizer.batch_decode(batch, skip_special_tokens=skip_special_tokens))
    texts = backend.decode_batch(batch, skip_special_tokens=skip_special_tokens)
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        texts = [tokenizer.clean_up_tokenization(t) for t in texts]
    return list(texts)


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens: ``tokenizer(texts,
    add_special_tokens=False)``, straight through the Rust tokenizer when there is one.

    The first call on a tokenizer checks that both routes give the same ids (a tokenizer class
    that adjusts ids in Python keeps its own route).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and texts:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        direct = _DIRECT_ENCODE.get(tokenizer)
        if direct is None:
            direct = [e.ids for e in encode(texts, add_special_tokens=False)] == [
                list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]
            ]
            _DIRECT_ENCODE[tokenizer] = direct
        if direct:
            return [e.ids for e in encode(texts, add_special_tokens=False)]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


_DIRECT_ENCODE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def model_context(max_model_len: int | None, model_path: str) -> int | None:
    """The longest sequence the engine takes: ``model.max_model_len``, else the model's own."""
    if max_model_len:
        return max_model_len
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def too_long(
    questions: Iterable[Question],
    prompt: Callable[[Question], list[int]],
    context: int | None,
    reserve: int,
) -> Iterator[Question]:
    """The questions whose phase-1 prompt would not leave ``reserve`` tokens within ``context``
    (an engine refuses a prompt longer than its context), as they stream past."""
    if context is None:
        return
    limit = context - reserve
    # A prompt has at most one token per UTF-8 byte of the question plus the template's own
    # tokens (8 spare for tokenizers that add a word marker): only longer texts are encoded.
    from builder.sources import Question

    overhead = len(prompt(Question("", ""))) + 8
    for q in questions:
        if len(q.text.encode("utf-8")) + overhead > limit and len(prompt(q)) > limit:
            yield q
