"""The trainer's model card and training summary, from hand-set summaries (no training run).

A summary here has the shape ``upft.train.summarize`` gives it, its packing, precision and
throughput parts made by the trainer's own ``PackingChoice``, ``precision.choose`` and
``train.throughput``; the config is a resolved ``TrainConfig``. Covered: the one-line texts of
the settings table (effective batch packed and not, over several processes; packing on/off;
throughput, absent without a measured time; precision with and without CPU flags), the card for
a Hub dataset and base model (front matter, data table) and for a local folder and a local or
embedded model (no ``base_model``), the results table's optional rows, the loss-averaging and
end-of-turn sentences, LoRA, the title and load path (``push_to_hub`` or the folder), the teacher
paragraph, and the files ``write_card`` and ``write_summary`` leave. The card of a real run is
checked in ``test_train.py``; ``push_folder`` in ``test_hub_train.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from upft import output
from upft.config import TrainConfig, resolve_config
from upft.packing import PackingChoice
from upft.precision import choose
from upft.teacher import card_text
from upft.train import throughput

REQUIRED = {"dataset": "my-org/gsm8k-upft", "output": "runs/x"}
SDPA = "sdpa attention with a block-causal mask from the restarting positions"
NO_AMX = "CPU without AMX: float32 is faster than bf16 autocast"


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def config(**flags: Any) -> TrainConfig:
    return resolve_config(None, {**REQUIRED, **flags})


def train_summary(**overrides: Any) -> dict[str, Any]:
    """A packed single-process run of 10 steps on a Hub dataset sampled by another model."""
    precision = choose(None, cuda=False, cuda_bf16=False, flags=frozenset())
    seen = {
        "examples": 20,
        "input_tokens": 1800,
        "supervised_tokens": 453,
        "positions": 2000,
        "passes": 10,
    }
    summary: dict[str, Any] = {
        "dataset": {
            "kind": "hub",
            "location": "my-org/gsm8k-upft",
            "config": "mixture",
            "revision": None,
            "commit": "c0ffee",
            "name": "gsm8k-upft",
            "version": "1.0.0",
            "fingerprint": "sha256:5a1b0c7e9d2f4a6b",
            "built_with": {"id": "Qwen/Qwen2.5-Math-7B-Instruct", "revision": "r1"},
        },
        "model": {
            "spec": "Qwen/Qwen2.5-Math-1.5B",
            "path": "/cache/qwen",
            "revision": None,
            "name": "Qwen2.5-Math-1.5B",
        },
        "examples": {"prefix": 9, "full": 3, "total": 12},
        "supervised_tokens": {"prefix": 153, "full": 300, "total": 453},
        "input_tokens": {"prefix": 1000, "full": 800, "total": 1800},
        "dropped_too_long": 0,
        "dropped_truncated": 0,
        "steps": 10,
        "epochs": 0.8333333,
        "train_time_s": 2.0,
        "final_loss": 0.8125,
        "mean_loss": 1.23456,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "cpu_flags": list(precision.cpu_flags),
        "loss_averaging": "example",
        "packing": PackingChoice(True, SDPA, "sdpa", 512).describe(),
        "throughput": throughput(seen, 2.0),
        "resumed_from": None,
        "gradient_accumulation_steps": None,
        "world_size": 1,
        "end_of_turn": {
            "supervised": "<|im_end|>",
            "supervised_ids": [2],
            "masked_after": "\n",
            "masked_after_ids": [198],
        },
        "loss_history": [{"step": 10, "loss": 0.8125}],
        "teacher_prefixes": None,
    }
    summary.update(overrides)
    return summary


def section(card: str, title: str) -> list[str]:
    """The lines of the card's ``## title`` section, heading and blank lines left out."""
    body = card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line]


def test_effective_batch_unpacked() -> None:
    summary = train_summary(
        packing=PackingChoice(False, "packing = false (set)", "eager").describe(),
        gradient_accumulation_steps=16,
    )
    assert output._effective_batch(config(micro_batch_size=4), summary) == (
        "64 = 4 per device x 16 accumulation x 1 process(es)"
    )


def test_effective_batch_packed_over_processes() -> None:
    summary = train_summary(
        world_size=4, packing=PackingChoice(True, SDPA, "sdpa", 2048).describe()
    )
    assert output._effective_batch(config(), summary) == (
        "64 examples = 16 per process x 4 process(es), packed into micro-batches of up to "
        "2048 tokens"
    )


def test_packing_text() -> None:
    assert output._packing(PackingChoice(True, SDPA, "sdpa", 512).describe()) == (
        f"on, up to 512 tokens per micro-batch: {SDPA}"
    )
    off = PackingChoice(
        False, "attention implementation 'eager' has no packed-sequence support", "eager"
    )
    assert output._packing(off.describe()) == (
        "off: attention implementation 'eager' has no packed-sequence support"
    )


def test_throughput_text() -> None:
    assert output._throughput(train_summary()) == (
        "10.0 examples/s, 900.0 tokens/s (226.5 supervised), 10.0% of computed positions padding"
    )
    seen = {"examples": 0, "input_tokens": 0, "supervised_tokens": 0, "positions": 0, "passes": 0}
    assert output._throughput(train_summary(throughput=throughput(seen, 0.0))) is None


def test_precision_text() -> None:
    assert output._precision(train_summary()) == f"fp32 ({NO_AMX}), float32 master weights"
    amx = choose(None, cuda=False, cuda_bf16=False, flags=frozenset({"avx2", "amx_bf16", "sse4"}))
    summary = train_summary(
        precision=amx.name, precision_reason=amx.reason, cpu_flags=list(amx.cpu_flags)
    )
    assert output._precision(summary) == (
        "bf16 (CPU with AMX (amx_bf16): bf16 matrix units; CPU flags amx_bf16 avx2), "
        "float32 master weights"
    )


def test_card_of_a_hub_dataset_and_base_model(tmp_path: Path) -> None:
    card = output.render_card(config(), train_summary(), tmp_path / "run")
    assert card.startswith(
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- upft\n"
        "- prefix-fine-tuning\n- math\n- reasoning\nbase_model: Qwen/Qwen2.5-Math-1.5B\n"
        "datasets:\n- my-org/gsm8k-upft\n---\n\n# run\n\n"
        "`Qwen/Qwen2.5-Math-1.5B` (Qwen2.5-Math-1.5B) fine-tuned with"
    )
    assert "of its own sampled solutions" in card and "Teacher prefixes" not in card
    assert section(card, "Training data")[:12] == [
        "| | |",
        "|---|---|",
        "| Dataset | [`my-org/gsm8k-upft`](https://huggingface.co/datasets/my-org/gsm8k-upft) "
        "(Hub) |",
        "| Requested revision | `main` |",
        "| Resolved commit | `c0ffee` |",
        "| Config | `mixture` |",
        "| Dataset name / version | gsm8k-upft / 1.0.0 |",
        "| Manifest fingerprint | `sha256:5a1b0c7e9d2f4a6b` |",
        "| Sampled with | `Qwen/Qwen2.5-Math-7B-Instruct` @ `r1` |",
        "| Examples | 9 prefix + 3 full trace = 12 |",
        "| Supervised tokens | 153 prefix + 300 full trace = 453 |",
        "Loss is computed on completion tokens only: the prompt is masked, and a prefix "
        "example's target is",
    ]


@pytest.mark.parametrize("spec", ["embedded:smollm2", "./models/base", "org/name"])
def test_card_of_a_local_folder_and_model(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)  # "org/name" is a folder here, not a Hub id
    summary = train_summary(
        model={"spec": spec, "path": spec, "revision": None, "name": "base"},
        dataset={
            "kind": "local",
            "location": "/data/demo-upft/0.1.0",
            "config": "mixture",
            "revision": None,
            "commit": None,
            "name": None,
            "version": None,
            "fingerprint": None,
            "built_with": None,
        },
    )
    card = output.render_card(config(), summary, tmp_path / "run")
    assert card.split("\n---\n", 1)[0] == (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- upft\n"
        "- prefix-fine-tuning\n- math\n- reasoning"
    )
    assert section(card, "Training data")[2:7] == [
        "| Dataset | local folder `/data/demo-upft/0.1.0` |",
        "| Config | `mixture` |",
        "| Dataset name / version | ? / ? |",
        "| Manifest fingerprint | `none (no manifest.json)` |",
        "| Examples | 9 prefix + 3 full trace = 12 |",
    ]


def test_card_optional_rows_and_sentences(tmp_path: Path) -> None:
    summary = train_summary(
        dropped_too_long=2,
        dropped_truncated=1,
        epochs=None,
        final_loss=None,
        resumed_from="checkpoint-5",
        loss_averaging="token",
        packing=PackingChoice(False, "packing = false (set)", "sdpa").describe(),
        gradient_accumulation_steps=64,
        end_of_turn={
            "supervised": "<|eot_id|>",
            "supervised_ids": [9],
            "masked_after": "",
            "masked_after_ids": [],
        },
        throughput=throughput(
            {"examples": 0, "input_tokens": 0, "supervised_tokens": 0, "positions": 0, "passes": 0},
            0.0,
        ),
    )
    card = output.render_card(config(loss_averaging="token"), summary, tmp_path / "run")
    data = section(card, "Training data")
    assert data[9] == (
        "| Examples | 9 prefix + 3 full trace = 12 (2 longer than max_length left out) "
        "(1 full trace(s) that hit the token limit left out) |"
    )
    assert data[12:] == [
        "exactly its prefix tokens followed by `<|eot_id|>`.",
        "The loss is averaged over all supervised tokens of each effective batch (`loss_averaging:",
        "token`), so a long full trace weighs more than a short prefix: not the paper's setup.",
    ]  # and no packing paragraph
    assert section(card, "Results") == [
        "| | |",
        "|---|---|",
        "| Optimizer steps | 10 |",
        "| Epochs | 0.000 |",
        "| Training time | 2.0 s |",
        "| Final logged loss | n/a |",
        "| Mean training loss | 1.2346 |",
        "| Resumed from | `checkpoint-5` (training time counts the resumed part) |",
    ]


def test_card_of_a_packed_run(tmp_path: Path) -> None:
    card = output.render_card(config(), train_summary(), tmp_path / "run")
    data = section(card, "Training data")
    assert data[12:] == [
        "exactly its prefix tokens followed by `<|im_end|>`; what the template writes after "
        "that (`\\n`) is not supervised.",
        "Each example counts once (`loss_averaging: example`, the paper's setup): the loss is "
        "the mean",
        "over an example's supervised tokens, then the mean over the examples of the effective "
        "batch.",
        "Examples were packed without padding into micro-batches of up to",
        "512 tokens; no token attends across an example's boundary",
        "and the loss is the one an unpacked run computes.",
    ]
    assert section(card, "Results")[3:] == [
        "| Epochs | 0.833 |",
        "| Training time | 2.0 s |",
        "| Throughput | 10.0 examples/s, 900.0 tokens/s (226.5 supervised), 10.0% of computed "
        "positions padding |",
        "| Final logged loss | 0.8125 |",
        "| Mean training loss | 1.2346 |",
    ]


def test_card_settings_lora_title_and_load_path(tmp_path: Path) -> None:
    cfg = config(
        lora=True,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=["q_proj", "v_proj"],
        max_steps=5,
        push_to_hub="team/tuned",
    )
    card = output.render_card(cfg, train_summary(), tmp_path / "run")
    assert "\n# team/tuned\n" in card
    assert 'tok = AutoTokenizer.from_pretrained("team/tuned")' in card
    assert 'The folder also loads in vLLM: `vllm.LLM("team/tuned")`.' in card
    assert section(card, "Training settings")[2:] == [
        "| learning rate | `1e-06` |",
        "| schedule | `constant_with_warmup, warm-up ratio 0.03` |",
        "| optimizer | `adamw_torch, weight decay 0.0` |",
        "| gradient clipping | `1.0` |",
        "| effective batch | `64 examples = 64 per process x 1 process(es), packed into "
        "micro-batches of up to 512 tokens` |",
        f"| packing | `on, up to 512 tokens per micro-batch: {SDPA}` |",
        "| loss averaging | `per example` |",
        "| epochs | `1.0` |",
        "| max steps | `5` |",
        "| max length | `4096` |",
        f"| precision | `fp32 ({NO_AMX}), float32 master weights` |",
        "| gradient checkpointing | `False` |",
        "| seed | `42` |",
        "| LoRA (merged into the weights) | `r=8, alpha=16, dropout=0.05, modules=q_proj,v_proj` |",
    ]
    full = output.render_card(config(), train_summary(), tmp_path / "run")
    assert section(full, "Training settings")[-1] == "| fine-tuning | `full` |"
    assert "| max steps | `none` |" in full
    where = str((tmp_path / "run").resolve())
    assert f'model = AutoModelForCausalLM.from_pretrained("{where}")' in full


def test_card_of_teacher_prefixes(tmp_path: Path) -> None:
    teacher = {
        "teacher": {"id": "Qwen/Qwen2.5-Math-7B-Instruct", "revision": "r1"},
        "student": {"spec": "Qwen/Qwen2.5-Math-1.5B"},
        "prefix_rows": 9,
        "changed_count": 2,
        "teacher_tokens": {"total": 144, "min": 16, "mean": 16.0, "max": 16},
        "student_tokens": {"total": 150, "min": 15, "mean": 16.667, "max": 18},
        "counts_file": "teacher_prefix_counts.jsonl",
    }
    card = output.render_card(config(), train_summary(teacher_prefixes=teacher), tmp_path / "r")
    assert "of another model's sampled solutions" in card
    assert f"No gold answers are used.\n\n{card_text(teacher)}\n\n## Training data\n" in card


def test_write_card_and_summary(tmp_path: Path) -> None:
    cfg, summary = config(), train_summary()
    card = output.write_card(cfg, summary, tmp_path)
    assert card == tmp_path / "README.md"
    assert card.read_text(encoding="utf-8") == output.render_card(cfg, summary, tmp_path)
    path = output.write_summary(
        {"steps": 10, "loss_history": [{"step": 1}], "eval": None}, tmp_path
    )
    assert path == tmp_path / "train_summary.json"
    assert path.read_text(encoding="utf-8") == (
        '{\n  "steps": 10,\n  "loss_history": [\n    {\n      "step": 1\n    }\n  ],\n'
        '  "eval": null\n}\n'
    )
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "steps": 10,
        "loss_history": [{"step": 1}],
        "eval": None,
    }


def test_end_of_turn_text_escapes_control_characters_only(tmp_path: Path) -> None:
    summary = train_summary(
        end_of_turn={
            "supervised": "<｜end▁of▁sentence｜>",
            "supervised_ids": [1],
            "masked_after": "\n\t",
            "masked_after_ids": [198, 197],
        }
    )
    card = output.render_card(config(), summary, tmp_path / "run")
    assert "exactly its prefix tokens followed by `<｜end▁of▁sentence｜>`;" in card
    assert "what the template writes after that (`\\n\\t`) is not supervised" in card
