"""Prompt construction and prefix text: the messages a question becomes, and back from ids.

Both sampling phases and the written mixture use these functions, so the prompt a model was
sampled with is exactly the prompt the trainer sees. A prefix example's user message is the
question followed by the recipe's instruction; a full-trace example's is the plain question.
"""

from __future__ import annotations

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
