"""End-to-end training on CPU with the real SmolLM2 on a real build (``demo_build``).

One 10-step full fine-tune is shared by the tests of this module (the session's ``upft-train
--eval`` run, ``demo_trained`` in tests/upft/conftest.py, which evaluation/test_e2e.py checks
too): the loss on a fixed batch falls, the weights change, the model learns to end its turn right
after a prefix under the prefix instruction (and not at that depth of a full trace), and the
folder reloads and generates with transformers. (That a trained folder loads and generates in
vLLM is proven by ``tests/upft/evaluation/test_e2e.py``, whose ``upft-train --eval`` evaluates
it with the vLLM engine.) A 2-step LoRA run checks the merged output.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from upft.cli import main
from upft.config import resolve_config

pytestmark = pytest.mark.slow

IM_END = 2
STEPS = 10  # the shared run's (tests/upft/conftest.py TRAIN_FLAGS)


def train(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="module")
def trained(demo_trained: Path) -> Path:
    return demo_trained


@pytest.fixture(scope="module")
def rows(demo_build: Path) -> list[dict[str, Any]]:
    """The build's mixture rows, read straight from its parquet files."""
    import pyarrow.parquet as pq

    files = sorted((demo_build / "data" / "mixture").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def manifest(demo_build: Path) -> dict[str, Any]:
    return json.loads((demo_build / "manifest.json").read_text())


def load(path: str) -> Any:
    """The model in float32: the embedded SmolLM2 folder is stored in bfloat16, which a CPU
    without native bfloat16 computes many times slower. The upcast is exact, so unchanged
    weights still compare equal."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def batch_loss(model: Any, batch: dict[str, Any]) -> float:
    import torch

    with torch.no_grad():
        return float(model(**batch).loss)


def test_output_folder(
    trained: Path, demo_build: Path, rows: list[dict[str, Any]], manifest: dict[str, Any]
) -> None:
    names = {p.name for p in trained.iterdir()}
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "README.md",
                 "train_summary.json", "train_config.yaml"):  # fmt: skip
        assert name in names, name
    assert "trainer" not in names and "adapter" not in names

    summary = json.loads((trained / "train_summary.json").read_text())
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("prefix", "full")}
    assert by_kind["prefix"] and by_kind["full"]  # the build mixes both kinds
    assert summary["examples"] == {
        "prefix": len(by_kind["prefix"]),
        "full": len(by_kind["full"]),
        "total": len(rows),
    }
    # every completion's own tokens plus the one <|im_end|>; nothing else is supervised. A
    # prefix re-tokenises to exactly its sampled ids (the builder settles it so); a full trace
    # is supervised as its text tokenises on its own, which may merge a sampled token or two.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained)
    full = sum(
        len(tok(r["completion"][0]["content"], add_special_tokens=False)["input_ids"]) + 1
        for r in by_kind["full"]
    )
    prefix = sum(r["num_tokens"] + 1 for r in by_kind["prefix"])
    assert summary["supervised_tokens"] == {"prefix": prefix, "full": full, "total": prefix + full}
    assert summary["steps"] == STEPS
    assert len(summary["loss_history"]) == STEPS
    assert summary["final_loss"] == summary["loss_history"][-1]["loss"]
    # CPU runs compute in float32 unless the CPU has AMX (decided from its flags)
    from upft.precision import choose, cpu_flags

    expected = choose(None, cuda=False, cuda_bf16=False, flags=cpu_flags())
    assert (summary["precision"], summary["precision_reason"]) == (expected.name, expected.reason)
    assert summary["cpu_flags"] == list(expected.cpu_flags)
    # packed by default (SmolLM2 with SDPA): micro-batches of up to 512 tokens on CPU, or
    # max_length when smaller (512 here); nothing padded
    assert summary["packing"] == {
        "enabled": True,
        "reason": "sdpa attention with a block-causal mask from the restarting positions",
        "attention": "sdpa",
        "micro_batch_tokens": 512,
    }
    assert summary["gradient_accumulation_steps"] is None
    rates = summary["throughput"]
    assert rates["padding_share"] == 0.0
    assert rates["examples_per_s"] == pytest.approx(STEPS * 2 / summary["train_time_s"], rel=0.05)
    assert 0 < rates["supervised_tokens_per_s"] < rates["tokens_per_s"]
    assert summary["loss_averaging"] == "example"
    assert summary["resumed_from"] is None
    assert summary["dropped_truncated"] == 0
    assert summary["dataset"]["kind"] == "local"
    assert summary["dataset"]["location"] == str(demo_build.resolve())
    assert summary["dataset"]["fingerprint"] == manifest["fingerprint"]
    assert summary["dataset"]["version"] == manifest["version"]
    assert summary["end_of_turn"] == {
        "supervised": "<|im_end|>",
        "supervised_ids": [IM_END],
        "masked_after": "\n",
        "masked_after_ids": [198],
    }

    config = resolve_config(trained / "train_config.yaml", {})
    assert (config.learning_rate, config.batch_size, config.max_steps) == (3e-4, 2, STEPS)
    assert config.bf16 is (expected.name == "bf16")  # written resolved, as is packing
    assert config.packing is True
    assert config.dataset == str(demo_build)


def test_model_card(trained: Path, demo_build: Path, rows: list, manifest: dict) -> None:
    card = (trained / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"| Dataset | local folder `{demo_build.resolve()}` |" in card
    assert f"| Manifest fingerprint | `{manifest['fingerprint']}` |" in card
    n_prefix = sum(1 for r in rows if r["kind"] == "prefix")
    expected = f"{n_prefix} prefix + {len(rows) - n_prefix} full trace = {len(rows)}"
    assert f"| Examples | {expected} |" in card
    assert "| learning rate | `0.0003` |" in card
    assert "| schedule | `constant_with_warmup, warm-up ratio 0.03` |" in card
    assert (
        "| effective batch | `2 examples = 2 per process x 1 process(es), packed into "
        "micro-batches of up to 512 tokens` |"
    ) in card
    assert (
        "| packing | `on, up to 512 tokens per micro-batch: sdpa attention with a block-causal "
        "mask from the restarting positions` |"
    ) in card
    assert "Examples were packed without padding into micro-batches of up to\n512 tokens" in card
    summary = json.loads((trained / "train_summary.json").read_text())
    rates = summary["throughput"]
    assert (
        f"| Throughput | {rates['examples_per_s']} examples/s, {rates['tokens_per_s']} tokens/s "
        f"({rates['supervised_tokens_per_s']} supervised), 0.0% of computed positions padding |"
    ) in card
    assert f"| precision | `{summary['precision']} ({summary['precision_reason']}" in card
    assert "| loss averaging | `per example` |" in card
    assert "Each example counts once (`loss_averaging: example`, the paper's setup)" in card
    assert f"| Optimizer steps | {STEPS} |" in card
    assert "followed by `<|im_end|>`; what the template writes after that (`\\n`)" in card
    assert "@inproceedings{ji2025first" in card and "2503.02875" in card


@pytest.fixture(scope="module")
def base_model(smollm2: Any) -> Any:
    return load(smollm2.path)


@pytest.fixture(scope="module")
def tuned_model(trained: Path) -> Any:
    return load(str(trained))


def test_training_moves_the_model(
    base_model: Any, tuned_model: Any, tokenizer: Any, rows: list
) -> None:
    import torch

    from upft.data import CompletionCollator, encode_rows, turn_end

    encoded, _ = encode_rows(rows, tokenizer, turn_end(tokenizer), 512)
    batch = CompletionCollator(IM_END)(encoded)
    before, after = batch_loss(base_model, batch), batch_loss(tuned_model, batch)
    assert after < 0.8 * before, (before, after)

    base_params = dict(base_model.named_parameters())
    changed = [
        name for name, p in tuned_model.named_parameters() if not torch.equal(p, base_params[name])
    ]
    assert len(changed) == len(base_params)  # a full fine-tune touches every tensor
    assert tuned_model.config.use_cache is True
    assert tuned_model.generation_config.eos_token_id == IM_END


def end_of_turn_probability(model: Any, tokenizer: Any, row: dict[str, Any], length: int) -> float:
    """P(<|im_end|>) right after the first ``length`` completion tokens of ``row``."""
    import torch

    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"][
        :length
    ]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return float(logits.softmax(-1)[IM_END])


def test_model_learns_to_stop_after_a_prefix_only_when_asked(
    base_model: Any, tuned_model: Any, tokenizer: Any, rows: list
) -> None:
    """The prefix target ends with <|im_end|>: after training, the end of turn is likely right
    after a prefix under the prefix instruction, but not at the same depth of a full trace."""
    prefix_rows = [r for r in rows if r["kind"] == "prefix"]
    full_rows = [r for r in rows if r["kind"] == "full"]
    length = prefix_rows[0]["num_tokens"]

    def probs(model: Any, group: list) -> list[float]:
        return [end_of_turn_probability(model, tokenizer, r, r["num_tokens"]) for r in group]

    # The median for the base model: a prefix cut where a sentence happens to end (one of the
    # six here, "... 8 years old now.") gets some end-of-turn mass even before training.
    base_prefix = statistics.median(probs(base_model, prefix_rows))
    tuned_prefix = statistics.fmean(probs(tuned_model, prefix_rows))
    tuned_full = max(end_of_turn_probability(tuned_model, tokenizer, r, length) for r in full_rows)
    print(
        f"P(end of turn): base {base_prefix:.4f}, tuned {tuned_prefix:.4f}, full {tuned_full:.4f}"
    )
    assert base_prefix < 0.01
    assert tuned_prefix > 0.25
    assert tuned_full < 0.05


def test_reloads_and_generates_with_transformers(trained: Path, tuned_model: Any) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(trained))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 12 * 7?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(str(text), add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = tuned_model.generate(ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    assert 1 <= len(new) <= 12
    assert str(tok.decode(new, skip_special_tokens=True)).strip()


def test_lora_run_saves_a_merged_model(tmp_path: Path, demo_build: Path, base_model: Any) -> None:
    import torch
    from safetensors import safe_open

    out = tmp_path / "lora"
    train("--dataset", str(demo_build), "--output", str(out), "--lora", "--lora-r", "4",
          "--lora-target-modules", "q_proj,v_proj", "--max-steps", "2", "--batch-size", "2",
          "--micro-batch-size", "2", "--learning-rate", "1e-3", "--warmup-ratio", "0",
          "--max-length", "512", "--quiet")  # fmt: skip
    # --model left out: the dataset's manifest names the model it was sampled with.
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["model"]["spec"] == "embedded:smollm2"
    assert summary["packing"]["enabled"]  # LoRA packs too
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k]

    tuned = load(str(out))
    base_params = dict(base_model.named_parameters())
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, base_params[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    assert "| LoRA (merged into the weights) | `r=4, alpha=32" in (out / "README.md").read_text()
