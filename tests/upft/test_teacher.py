"""Teacher prefixes end to end, with two real tokenizers in both directions.

The second model is ours: a two-layer Llama with random weights and a byte-level BPE tokenizer
the fixture trains with ``tokenizers`` on our own demo questions (512 tokens, ChatML-style turn
tokens), saved to a temporary folder. SmolLM2's prefixes (the session's real build,
``demo_build``) train that model, and a build sampled by that model (through the transformers
backend, which loads any local folder) trains SmolLM2. By default ``upft-train`` refuses both
datasets (the paper's setting is self-generated prefixes); with ``--teacher-prefixes`` each
prefix's text is trained whole in the student's tokens, the summary and the card name teacher
and student, and every row's two token counts are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import DEMO_RECIPE, demo_recipe
from upft.cli import main

pytestmark = pytest.mark.slow

# A ChatML-style template of the tiny model's own (its turn tokens are in its vocabulary).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FLAGS = (
    "--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2", "--learning-rate",
    "1e-4", "--max-length", "512", "--save-steps", "0", "--seed", "0", "--quiet",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random two-layer Llama whose BPE tokenizer is trained here on our demo questions."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    questions = DEMO_RECIPE.parent / "data" / "demo-questions.jsonl"
    texts = [json.loads(line)["question"] for line in questions.read_text().splitlines()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("models") / "tiny-bpe-llama"
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_build(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build whose prefixes the tiny model sampled (transformers backend, the paper's vote)."""
    from builder.pipeline import build

    recipe = demo_recipe(
        tmp_path_factory.mktemp("tiny-out"),
        limit=6,
        backend="transformers",
        model={"id": str(tiny), "dtype": "float32", "max_model_len": 1024},
        prefix={"vote": "first", "samples": 1, "length": 8},
        mixture={"full_trace_ratio": 0.0},
    )
    return build(recipe, None, quiet=True).path


def prefix_rows(version: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted((version / "data" / "mixture").glob("*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return [r for r in rows if r["kind"] == "prefix"]


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def check_teacher_run(
    out: Path, version: Path, teacher: str, student: str, student_folder: str
) -> None:
    """The summary, the counts file and the card of a finished --teacher-prefixes run."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_folder)
    rows = prefix_rows(version)
    expected = [
        {
            "question_id": r["question_id"],
            "teacher_tokens": r["num_tokens"],
            "student_tokens": len(
                tok(r["completion"][0]["content"], add_special_tokens=False)["input_ids"]
            ),
        }
        for r in rows
    ]
    lines = (out / "teacher_prefixes.jsonl").read_text().splitlines()
    assert sorted((json.loads(line) for line in lines), key=str) == sorted(expected, key=str)
    section = json.loads((out / "train_summary.json").read_text())["teacher_prefixes"]
    assert section["teacher"]["id"] == teacher
    assert section["student"]["spec"] == student
    assert section["prefix_rows"] == len(rows) > 0
    assert section["teacher_tokens"]["total"] == sum(e["teacher_tokens"] for e in expected)
    assert section["student_tokens"]["total"] == sum(e["student_tokens"] for e in expected)
    assert section["changed_count"] == sum(
        1 for e in expected if e["teacher_tokens"] != e["student_tokens"]
    )
    assert section["changed_count"] > 0  # two tokenizers: the counts really differ
    card = " ".join((out / "README.md").read_text().split())
    assert "Teacher prefixes: not the paper's self-generated setting." in card
    assert f"sampled by the teacher `{teacher}`" in card
    assert f"the student `{student}`" in card
    assert "the first tokens of another model's sampled solutions" in card
    assert "teacher_prefixes: true" in (out / "train_config.yaml").read_text()


def test_smollm2_prefixes_train_a_model_with_its_own_tokenizer(
    demo_build: Path, tiny: Path, tmp_path: Path
) -> None:
    refused = run("--dataset", str(demo_build), "--model", str(tiny), "--output",
                  str(tmp_path / "refused"), *FLAGS)  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert "the dataset was probably sampled with another tokenizer" in refused.stderr
    assert "pass --teacher-prefixes" in refused.stderr
    assert not (tmp_path / "refused" / "config.json").exists()

    out = tmp_path / "student"
    done = run("--dataset", str(demo_build), "--model", str(tiny), "--output", str(out),
               "--teacher-prefixes", *FLAGS)  # fmt: skip
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    check_teacher_run(out, demo_build, "embedded:smollm2", str(tiny), str(tiny))


def test_a_tiny_models_prefixes_train_smollm2(
    tiny_build: Path, tiny: Path, tmp_path: Path, smollm2: Any
) -> None:
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    assert manifest["model"]["id"] == str(tiny)
    refused = run("--dataset", str(tiny_build), "--model", "embedded:smollm2", "--output",
                  str(tmp_path / "refused"), *FLAGS)  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert "pass --teacher-prefixes" in refused.stderr

    out = tmp_path / "student"
    done = run("--dataset", str(tiny_build), "--model", "embedded:smollm2", "--output", str(out),
               "--teacher-prefixes", *FLAGS)  # fmt: skip
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    check_teacher_run(out, tiny_build, str(tiny), "embedded:smollm2", smollm2.path)


def test_prefix_text_is_trained_whole_in_the_students_tokens(demo_build: Path, tiny: Path) -> None:
    """The supervised tokens of a re-tokenised prefix row are the student's tokens of exactly
    its text, then the end-of-turn token; without the option the same row is refused."""
    from transformers import AutoTokenizer

    from builder.errors import TrainError
    from upft.data import IGNORE, encode_row, turn_end

    tok = AutoTokenizer.from_pretrained(str(tiny))
    end = turn_end(tok)
    row = prefix_rows(demo_build)[0]
    text = row["completion"][0]["content"]
    item = encode_row(row, tok, end, retokenise=True)
    supervised = [t for t in item["labels"] if t != IGNORE]
    assert supervised == tok(text, add_special_tokens=False)["input_ids"] + list(end.supervised)
    assert tok.decode(supervised[: -len(end.supervised)]) == text
    assert (item["sampled_tokens"], item["content_tokens"]) == (
        row["num_tokens"],
        len(supervised) - len(end.supervised),
    )
    with pytest.raises(TrainError, match="pass --teacher-prefixes"):
        encode_row(row, tok, end)


def test_teacher_prefixes_need_a_student(demo_build: Path, tmp_path: Path) -> None:
    result = run("--dataset", str(demo_build), "--output", str(tmp_path / "o"),
                 "--teacher-prefixes", "--quiet")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "error: --teacher-prefixes trains another model than the one that sampled the dataset "
        "(embedded:smollm2); pass the student with --model"
    )
