"""Prompt construction and instruction-echo measurement (builder.prompts)."""

from __future__ import annotations

from builder.prompts import echo_share, echoes, encode_prompt, instruction_markers, messages
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


def test_echo_share_counts_texts_that_repeat_a_marker():
    markers = ["first thing", "opening step"]
    assert echoes("The FIRST   thing is x", markers)
    assert not echoes("firstthing", markers)
    assert echo_share(["The first thing", "add 2", "my opening step"], markers) == 2 / 3
    assert echo_share([], markers) is None


def test_fit_context_keeps_what_fits_and_encodes_only_long_texts():
    from builder.prompts import fit_context
    from builder.sources import Question

    encoded: list[str] = []

    def prompt(q: Question) -> list[int]:
        encoded.append(q.id)
        return list(range(10 + len(q.text)))  # 10 template tokens, one per character

    qs = [Question("short", "x" * 20), Question("edge", "y" * 30), Question("long", "z" * 31)]
    kept, skipped = fit_context(qs, prompt, context=48, reserve=8)  # 40 prompt tokens at most
    assert [q.id for q in kept] == ["short", "edge"] and skipped == ["long"]
    # The empty question measures the template; "short" fits by its byte count alone.
    assert encoded == ["", "edge", "long"]
    assert fit_context(qs, prompt, context=None, reserve=8) == (qs, [])


def test_model_context_from_the_recipe_or_the_model_config(tmp_path):
    import json

    from builder.prompts import model_context

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert model_context(None, str(tmp_path)) == 8192
    assert model_context(2048, str(tmp_path)) == 2048
    assert model_context(None, str(tmp_path / "absent")) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    assert model_context(None, str(tmp_path)) is None
