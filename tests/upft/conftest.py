"""Trainer-only fixtures: the SmolLM2 tokenizer, a hand-made UPFT version folder, and one real
training run with its evals.

End-to-end training tests use the real build (``demo_build`` in tests/conftest.py). The data
and mask tests use the folder made here, whose rows are fully under the test's control: GSM8K
test questions and solutions (read from ../shared/data, never copied into the repo) tokenised
with the real SmolLM2 tokenizer so that ``num_tokens`` is exact, the solutions standing in for
sampled traces (long full traces included). It is laid out as ``upft-build`` writes it:
README.md with ``configs:`` front matter, ``data/<config>/*.parquet``, ``manifest.json``,
``recipe.yaml``.

``demo_base_eval`` and ``demo_trained`` run ``upft-eval`` and ``upft-train --eval`` as a user
does (own processes, vLLM) on the demo build, once per session: test_train.py and
evaluation/test_e2e.py check the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_RECIPE

# ../shared/data next to the repository root
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k-test.jsonl"

INSTRUCTION = (
    "Give only the first step of your solution. It does not have to reach the final answer."
)
PREFIX_LENGTH = 16
QUESTIONS = 12
FULL_EVERY = 4  # questions 0, 4, 8 get a full trace: 3 full + 9 prefix rows

README = """---
configs:
- config_name: mixture
  default: true
  data_files:
  - split: train
    path: data/mixture/*.parquet
- config_name: prefixes
  data_files:
  - split: train
    path: data/prefixes/*.parquet
- config_name: traces
  data_files:
  - split: train
    path: data/traces/*.parquet
---
# demo-upft (test fixture)
"""


@pytest.fixture(scope="session")
def tokenizer(smollm2: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2.path)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prefix_of(tokenizer: Any, text: str, length: int) -> tuple[str, int]:
    """The longest start of ``text``'s first ``length`` tokens that decodes and re-encodes
    to the same ids without trailing white space (what the builder guarantees)."""
    ids = encode(tokenizer, text)[:length]
    while ids:
        piece = tokenizer.decode(ids)
        if piece == piece.rstrip() and encode(tokenizer, piece) == ids:
            return piece, len(ids)
        ids.pop()
    raise AssertionError(f"no stable prefix in {text!r}")


def mixture_rows(tokenizer: Any) -> list[dict[str, Any]]:
    rows = []
    with DATA.open(encoding="utf-8") as fh:
        items = [json.loads(line) for _, line in zip(range(QUESTIONS), fh, strict=False)]
    for i, item in enumerate(items):
        qid = f"gsm8k-test-{i:04d}"
        if i % FULL_EVERY == 0:
            prompt = [{"role": "user", "content": item["question"]}]
            content = item["answer"]
            rows.append(
                {
                    "question_id": qid,
                    "kind": "full",
                    "prompt": prompt,
                    "completion": [{"role": "assistant", "content": content}],
                    "num_tokens": len(encode(tokenizer, content)),
                }
            )
        else:
            prompt = [{"role": "user", "content": f"{item['question']}\n\n{INSTRUCTION}"}]
            content, n = prefix_of(tokenizer, item["answer"], PREFIX_LENGTH)
            rows.append(
                {
                    "question_id": qid,
                    "kind": "prefix",
                    "prompt": prompt,
                    "completion": [{"role": "assistant", "content": content}],
                    "num_tokens": n,
                }
            )
    return rows


def write_version_dir(folder: Path, rows: list[dict[str, Any]], model: Any) -> Path:
    from datasets import Dataset

    for config in ("mixture", "prefixes", "traces"):
        (folder / "data" / config).mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(
        str(folder / "data" / "mixture" / "train-00000-of-00001.parquet")
    )
    prefixes = [
        {"question_id": r["question_id"], "prefix": r["completion"][0]["content"]}
        for r in rows
        if r["kind"] == "prefix"
    ]
    traces = [
        {"question_id": r["question_id"], "trace": r["completion"][0]["content"]}
        for r in rows
        if r["kind"] == "full"
    ]
    Dataset.from_list(prefixes).to_parquet(str(folder / "data/prefixes/train-00000.parquet"))
    Dataset.from_list(traces).to_parquet(str(folder / "data/traces/train-00000.parquet"))
    (folder / "README.md").write_text(README, encoding="utf-8")
    manifest = {
        "name": "demo-upft",
        "version": "0.1.0",
        "fingerprint": "sha256:5a1b0c7e9d2f4a6b",
        "model": {"id": "embedded:smollm2", "revision": model.revision},
        "settings": {"prefix_length": PREFIX_LENGTH, "full_trace_ratio": 0.25},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (folder / "recipe.yaml").write_text(
        "name: demo-upft\nversion: 0.1.0\nmodel:\n  id: embedded:smollm2\n", encoding="utf-8"
    )
    return folder


@pytest.fixture(scope="session")
def mixture(tokenizer: Any) -> list[dict[str, Any]]:
    return mixture_rows(tokenizer)


@pytest.fixture(scope="session")
def version_dir(tmp_path_factory: pytest.TempPathFactory, mixture: list, smollm2: Any) -> Path:
    folder = tmp_path_factory.mktemp("datasets") / "demo-upft" / "0.1.0"
    folder.mkdir(parents=True)
    return write_version_dir(folder, mixture, smollm2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A randomly initialised two-layer Llama with SmolLM2's tokenizer and chat template: the
    whole trainer runs on it in well under a second per step (for logic, not for learning)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# --- one training run and base eval shared by test_train.py and evaluation/test_e2e.py ---------

BIN = Path(sys.executable).parent
# The demo build's questions (tests/conftest.py builds the first 8 of the demo recipe's file):
# the prefix check on them shows what training on their prefixes taught.
EVAL_DATA = DEMO_RECIPE.parent / "data" / "demo-questions.jsonl"
EVAL_QUESTIONS = 8
EVAL_PREFIX_LENGTH = 16  # the demo build's L (tests/conftest.py BUILD_OVERRIDES)
EVAL_MAX_TOKENS = 64
EVAL_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
EVAL_FLAGS = [
    "--data", str(EVAL_DATA), "--answer", "answer", "--id-field", "id",
    "--limit", str(EVAL_QUESTIONS), "--max-tokens", str(EVAL_MAX_TOKENS),
    "--prefix-length", str(EVAL_PREFIX_LENGTH),
    "--compile", "eager", "--cpu-kvcache-gib", "1",
]  # fmt: skip
# A short run with a high learning rate: 10 steps are enough to teach the model to end its turn
# after the prefix under the instruction (greedy decoding needs the end-of-turn token to win).
TRAIN_FLAGS = [
    "--max-steps", "10", "--batch-size", "2", "--micro-batch-size", "2",
    "--learning-rate", "3e-4", "--max-length", "512", "--seed", "0", "--quiet",
]  # fmt: skip


def run_command(
    command: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / command), *args],
        capture_output=True,
        text=True,
        env=env or EVAL_ENV,
        timeout=1800,
    )
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def demo_base_eval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``upft-eval`` of the embedded SmolLM2 (vLLM, its own process) on the demo questions."""
    out = tmp_path_factory.mktemp("evals") / "base"
    proc = run_command(
        "upft-eval", "--model", "embedded:smollm2", *EVAL_FLAGS, "--output", str(out), "--quiet"
    )
    assert proc.stdout.splitlines()[-1] == str(out)
    return out


@pytest.fixture(scope="session")
def demo_trained(
    tmp_path_factory: pytest.TempPathFactory, demo_build: Path, demo_base_eval: Path
) -> Path:
    """One 10-step ``upft-train --eval`` (its own process) on the demo build, shared by
    test_train.py (the trained folder, its summary, card and learning) and
    evaluation/test_e2e.py (its vLLM eval, card and prefix behaviour)."""
    folder = tmp_path_factory.mktemp("runs")
    config = folder / "eval.yaml"
    config.write_text(
        "model: {compile: eager, cpu_kvcache_gib: 1}\n"
        f"data: {{path: {EVAL_DATA}, answer: answer, id: id, limit: {EVAL_QUESTIONS}}}\n"
        f"generation: {{max_tokens: {EVAL_MAX_TOKENS}}}\n"
        f"prefix_check: {{length: {EVAL_PREFIX_LENGTH}}}\n"
        f"base: {demo_base_eval}\n"
    )
    out = folder / "demo"
    run_command("upft-train", "--dataset", str(demo_build), "--model", "embedded:smollm2",
        "--output", str(out), *TRAIN_FLAGS, "--eval", str(config))  # fmt: skip
    return out
