"""The trainer's loss: each example counts once (default) or each supervised token.

The expected values are computed independently of ``upft.loss``: every row is run through the
model alone (no padding, no batching) and its token losses are taken from a float64
log-softmax. The batch under test is one long full row and three short prefix rows, so the two
averaging modes differ by a factor of about ten in the full row's weight. The gradient a step
applies is decomposed into the rows' own gradients (least squares over the parameters), which
gives each row's share of the update directly.

Fast tests use a tiny randomly initialised Llama; the last one takes a real SmolLM2 step on
real mixture rows (GSM8K solutions standing in for sampled traces, see conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upft.config import resolve_config
from upft.data import IGNORE, CompletionCollator
from upft.packing import PackingCollator
from upft.train import accepts_logits_to_keep, training_arguments

FULL = 40  # supervised tokens of the full row (its completion and end-of-turn token)
PREFIX = 4  # supervised tokens of each prefix row


def tiny_model(seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def row(prompt: list[int], completion: list[int]) -> dict[str, list[int]]:
    return {"input_ids": prompt + completion, "labels": [IGNORE] * len(prompt) + completion}


def rows(seed: int = 1) -> list[dict[str, list[int]]]:
    """One long full row first, then three short prefix rows (random ids below 64)."""
    import random

    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, 64) for _ in range(n)]

    return [row(ids(5), ids(FULL))] + [row(ids(6 + i), ids(PREFIX)) for i in range(3)]


def own_loss(model: Any, item: dict[str, list[int]]) -> tuple[float, int]:
    """(mean token loss, supervised tokens) of one row, run through the model alone."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([item["input_ids"]])).logits[0, :-1].double()
    targets = torch.tensor(item["labels"][1:])
    keep = targets != IGNORE
    logp = logits.log_softmax(-1)[keep].gather(1, targets[keep].unsqueeze(1))
    return float(-logp.mean()), int(keep.sum())


def own_grads(model: Any, item: dict[str, list[int]], names: list[str]) -> Any:
    """Gradient of one row's own mean token loss, flattened over ``names``."""
    import torch

    model.zero_grad()
    batch = CompletionCollator(0)([item])
    model(**batch).loss.backward()  # the model's loss of a single row is its token mean
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].grad.detach().flatten().double() for n in names])
    model.zero_grad()
    return flat


class Capture:
    """Trainer callback keeping the gradients right before each optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self
        self.grads: list[dict[str, Any]] = []

        class _Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                params = kw["model"].named_parameters()
                outer.grads.append(
                    {n: p.grad.detach().clone() for n, p in params if p.grad is not None}
                )

        self.callback = _Callback()


def train(
    model: Any,
    data: list[dict[str, list[int]]],
    tmp_path: Path,
    micro: int,
    batch: int,
    mode: str = "example",
    steps: int = 1,
    lr: str = "0.5",
    packed: int | None = None,
) -> tuple[Any, Capture]:
    """Run ``steps`` optimizer steps of the real UpftTrainer with SGD (update = lr x grad).

    ``packed``: pack each step's examples into micro-batches of at most this many tokens (as
    ``upft-train`` does), instead of padded micro-batches of ``micro`` examples.
    """
    from datasets import Dataset

    from upft.loss import trainer_class

    config = resolve_config(
        None,
        {
            "dataset": "a/b", "output": str(tmp_path), "batch_size": str(batch),
            "micro_batch_size": str(micro), "max_steps": str(steps), "optimizer": "sgd",
            "lr_scheduler": "constant", "warmup_ratio": "0", "learning_rate": lr,
            "max_grad_norm": "1e9", "loss_averaging": mode, "save_steps": "0", "seed": "0",
        },
    )  # fmt: skip
    capture = Capture()
    args = training_arguments(config, tmp_path / "trainer", False, True, packed is not None)
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data),
        data_collator=PackingCollator(packed) if packed else CompletionCollator(0),
        callbacks=[capture.callback],
        loss_averaging=mode,
        keep_logits=accepts_logits_to_keep(model),  # as upft-train runs it
    )
    trainer.train()
    return trainer, capture


def logged_losses(trainer: Any) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def shares(step_grads: dict[str, Any], model: Any, data: list, names: list[str]) -> list[float]:
    """Each row's coefficient in the step's gradient: g_step = sum_i c_i * g_i (least squares)."""
    import torch

    columns = torch.stack([own_grads(model, item, names) for item in data], dim=1)
    target = torch.cat([step_grads[n].flatten().double() for n in names]).unsqueeze(1)
    solution = torch.linalg.lstsq(columns, target).solution
    return [float(c) for c in solution.flatten()]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.parametrize("mode", ["example", "token"])
def test_step_loss_and_gradient_shares(tmp_path: Path, mode: str) -> None:
    import copy

    data = rows()
    start = tiny_model()
    losses = [own_loss(start, item) for item in data]
    if mode == "example":
        expected = sum(loss for loss, _ in losses) / len(losses)
        weights = [1 / len(data)] * len(data)
    else:
        tokens = sum(n for _, n in losses)
        expected = sum(loss * n for loss, n in losses) / tokens
        weights = [n / tokens for _, n in losses]
    assert [n for _, n in losses] == [FULL, PREFIX, PREFIX, PREFIX]

    trainer, capture = train(copy.deepcopy(start), data, tmp_path, micro=2, batch=4, mode=mode)
    assert logged_losses(trainer) == [pytest.approx(expected, rel=1e-5)]
    names = [n for n, _ in start.named_parameters()]
    found = shares(capture.grads[0], start, data, names)
    # the full row (first) has its example share (1/4) by default, not its token share (40/52)
    assert found == pytest.approx(weights, abs=1e-4)
    assert weights[0] == (0.25 if mode == "example" else FULL / (FULL + 3 * PREFIX))


@pytest.mark.parametrize("mode", ["example", "token"])
def test_micro_batch_split_does_not_change_the_step(tmp_path: Path, mode: str) -> None:
    """micro-batch 1 x accumulation 4 == micro-batch 4 x accumulation 1: loss, grads, weights."""
    import copy

    import torch

    data = rows()
    start = tiny_model()
    one, cap_one = train(copy.deepcopy(start), data, tmp_path / "a", micro=1, batch=4, mode=mode)
    four, cap_four = train(copy.deepcopy(start), data, tmp_path / "b", micro=4, batch=4, mode=mode)
    assert one.args.gradient_accumulation_steps == 4
    assert four.args.gradient_accumulation_steps == 1
    assert logged_losses(one) == [pytest.approx(logged_losses(four)[0], rel=1e-6)]
    for name, grad in cap_four.grads[0].items():
        torch.testing.assert_close(cap_one.grads[0][name], grad, rtol=1e-5, atol=1e-7)
    after_one = dict(one.model.named_parameters())
    moved = 0
    for name, param in four.model.named_parameters():
        torch.testing.assert_close(after_one[name], param, rtol=1e-5, atol=1e-7)
        moved += int(not torch.equal(param, dict(start.named_parameters())[name]))
    assert moved == len(after_one)  # the step did change every tensor


def test_last_partial_batch_averages_over_its_own_examples(tmp_path: Path) -> None:
    """6 rows, effective batch 4: the second step holds 2 rows, each weighing 1/2."""
    import itertools

    data = rows() + rows(seed=2)[:2]
    start = tiny_model()
    own = [own_loss(start, item)[0] for item in data]
    trainer, _ = train(start, data, tmp_path, micro=2, batch=4, steps=2, lr="1e-30")  # ~frozen
    first, second = logged_losses(trainer)
    assert 4 * first + 2 * second == pytest.approx(sum(own), rel=1e-5)
    pair_means = [(a + b) / 2 for a, b in itertools.combinations(own, 2)]
    assert min(abs(second - m) for m in pair_means) < 1e-5 * second


def test_loss_averaging_is_checked_and_recorded(tmp_path: Path) -> None:
    from builder.errors import TrainError
    from upft.config import write_config

    with pytest.raises(TrainError, match=r"loss_averaging = 'row' \(from --loss-averaging\) is"):
        resolve_config(None, {"dataset": "a/b", "output": "o", "loss_averaging": "row"})
    config = resolve_config(None, {"dataset": "a/b", "output": "o"})
    assert config.loss_averaging == "example"  # the paper's: each example counts once
    text = write_config(config, tmp_path).read_text()
    assert "\nloss_averaging: example\n" in text


@pytest.mark.slow
def test_exact_per_example_loss_weights_on_a_real_smollm2_step(
    tmp_path: Path, smollm2: Any, tokenizer: Any, mixture: list[dict[str, Any]]
) -> None:
    """One long full trace and three prefixes of the real fixture mixture, one real step of
    SmolLM2 (micro-batch 2 x accumulation 2): the step's loss is the hand-computed mean of the
    four examples' own mean losses, and the full trace's share of the gradient is 1/4."""
    from upft.data import encode_rows, turn_end
    from upft.train import load_model

    full = max((r for r in mixture if r["kind"] == "full"), key=lambda r: r["num_tokens"])
    prefixes = [r for r in mixture if r["kind"] == "prefix"][:3]
    encoded, stats = encode_rows([full, *prefixes], tokenizer, turn_end(tokenizer), 1024)
    tokens = [sum(1 for t in e["labels"] if t != IGNORE) for e in encoded]
    assert tokens[0] > 4 * max(tokens[1:])  # the full trace is much longer than a prefix
    assert stats.supervised_tokens["full"] == tokens[0]

    config = resolve_config(None, {"dataset": "a/b", "output": "o"})
    model = load_model(smollm2, config)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    own = [own_loss(model, item)[0] for item in encoded]
    trainer, capture = train(model, encoded, tmp_path, micro=2, batch=4, lr="1e-3")
    [step_loss] = logged_losses(trainer)
    per_token = sum(loss * n for loss, n in zip(own, tokens, strict=True)) / sum(tokens)
    print(f"step {step_loss:.5f}, per example {sum(own) / 4:.5f}, per token {per_token:.5f}")
    assert step_loss == pytest.approx(sum(own) / 4, rel=1e-4)
    assert abs(step_loss - per_token) > 100 * abs(step_loss - sum(own) / 4)

    with_grads = {n: p for n, p in model.named_parameters()}
    for name, value in start.items():  # back to the starting weights for the row gradients
        with_grads[name].data.copy_(value)
    # the last block and the final norm: enough parameters to solve for four coefficients
    last = f"model.layers.{model.config.num_hidden_layers - 1}."
    names = [n for n in with_grads if n.startswith((last, "model.norm."))]
    assert names
    found = shares(capture.grads[0], model, encoded, names)
    assert found == pytest.approx([0.25] * 4, abs=2e-3)


# --- packed micro-batches (upft.packing) ---------------------------------------------------------


def packed_logits(padded: Any, lengths: list[int]) -> Any:
    """The packed row's logits: each example's own positions of ``padded``, one after another."""
    import torch

    return torch.cat([padded[i, :n] for i, n in enumerate(lengths)]).unsqueeze(0)


@pytest.mark.parametrize("mode", ["example", "token"])
def test_loss_terms_of_a_packed_row_equal_those_of_padded_rows(mode: str) -> None:
    """The same logits per example, laid out as padded rows or as one packed row: the summed
    loss terms and the item count agree, also when only supervised positions have logits."""
    import torch

    from upft.loss import count_items, loss_sum, supervised_positions

    data = rows()
    lengths = [len(item["input_ids"]) for item in data]
    padded = CompletionCollator(0)(data)
    [packed] = PackingCollator(sum(lengths))(data)["micro_batches"]
    assert packed["input_ids"].tolist() == [sum((item["input_ids"] for item in data), [])]
    torch.manual_seed(0)
    logits = torch.randn(len(data), max(lengths), 64, dtype=torch.float64)
    flat = packed_logits(logits, lengths)
    positions = packed["position_ids"]
    expected = loss_sum(logits, padded["labels"], mode)
    assert loss_sum(flat, packed["labels"], mode, positions) == pytest.approx(float(expected))
    kept = supervised_positions(packed["labels"])
    assert len(kept) == FULL + 3 * PREFIX  # the prompt's positions need no logits
    assert float(loss_sum(flat[:, kept], packed["labels"], mode, positions, kept)) == (
        pytest.approx(float(expected))
    )
    assert (
        int(count_items(packed["labels"], mode, positions))
        == int(count_items(padded["labels"], mode))
        == (4 if mode == "example" else FULL + 3 * PREFIX)
    )


@pytest.mark.parametrize("mode", ["example", "token"])
def test_packed_step_equals_the_padded_step(tmp_path: Path, mode: str) -> None:
    """All four rows in one packed micro-batch, or cut into three by a 24-token budget: the same
    logged loss and gradients as padded micro-batches of two."""
    import copy

    import torch

    data = rows()
    start = tiny_model()
    padded, cap_padded = train(copy.deepcopy(start), data, tmp_path / "u", micro=2, batch=4,
                               mode=mode)  # fmt: skip
    for budget in (1024, 24):
        packed, cap = train(copy.deepcopy(start), data, tmp_path / f"p{budget}", micro=1,
                            batch=4, mode=mode, packed=budget)  # fmt: skip
        assert packed.args.gradient_accumulation_steps == 1
        assert packed.args.per_device_train_batch_size == 4  # the step's share of examples
        assert logged_losses(packed) == [pytest.approx(logged_losses(padded)[0], rel=1e-6)]
        for name, grad in cap_padded.grads[0].items():
            torch.testing.assert_close(cap.grads[0][name], grad, rtol=1e-5, atol=1e-7)
        assert packed.seen["examples"] == 4
        assert packed.seen["positions"] == packed.seen["input_tokens"]  # nothing padded
    assert padded.seen["positions"] > padded.seen["input_tokens"]


def test_packed_lora_step_equals_the_padded_lora_step(tmp_path: Path) -> None:
    """With LoRA (peft's wrapper in front of the model, as ``upft-train --lora`` builds it) a
    packed step gives the padded step's loss and the same gradient of every adapter weight."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    data = rows()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    torch.manual_seed(0)
    start = get_peft_model(tiny_model(), lora)
    for name, weight in start.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: no gradient would reach A
            torch.nn.init.normal_(weight, std=0.1)
    assert accepts_logits_to_keep(start)
    padded, cap_padded = train(copy.deepcopy(start), data, tmp_path / "u", micro=2, batch=4)
    packed, cap = train(copy.deepcopy(start), data, tmp_path / "p", micro=1, batch=4, packed=24)
    assert packed.seen["passes"] == 3 and packed.seen["positions"] == packed.seen["input_tokens"]
    assert logged_losses(packed) == [pytest.approx(logged_losses(padded)[0], rel=1e-6)]
    trained = {n for n, p in start.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    for name in trained:
        assert float(cap_padded.grads[0][name].abs().max()) > 0, name
        torch.testing.assert_close(cap.grads[0][name], cap_padded.grads[0][name], rtol=1e-5,
                                   atol=1e-7)  # fmt: skip


def test_empty_micro_batches_add_nothing(tmp_path: Path) -> None:
    """What a process's packed step is topped up with under FSDP (every process must run as
    many forward passes): a step with two empty micro-batches gives the same gradients."""
    import copy

    import torch

    from upft.loss import MICRO_BATCHES
    from upft.packing import empty_micro_batch

    data = rows()
    trainer, _ = train(copy.deepcopy(tiny_model()), data, tmp_path, micro=1, batch=4, packed=24)
    model = trainer.model
    step = PackingCollator(24)(data)
    assert len(step[MICRO_BATCHES]) == 3

    def grads(inputs: dict[str, Any]) -> dict[str, Any]:
        model.zero_grad()
        trainer.training_step(model, inputs, torch.tensor(4))
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    plain = grads(step)
    topped = grads(
        {MICRO_BATCHES: [*step[MICRO_BATCHES], empty_micro_batch(0), empty_micro_batch(0)]}
    )
    for name, grad in plain.items():
        torch.testing.assert_close(topped[name], grad, rtol=0, atol=0)
    assert any(float(g.abs().max()) > 0 for g in plain.values())


def max_relative_gap(found: dict[str, Any], expected: dict[str, Any]) -> float:
    """Largest |found - expected| over all tensors, relative to the largest expected value."""
    scale = max(float(g.abs().max()) for g in expected.values())
    return max(float((found[n] - g).abs().max()) for n, g in expected.items()) / scale


@pytest.mark.slow
def test_packed_and_padded_real_smollm2_steps_agree(
    tmp_path: Path, smollm2: Any, tokenizer: Any, mixture: list[dict[str, Any]]
) -> None:
    """One real SmolLM2 step on a long full trace and three prefixes: micro-batch 1 x
    accumulation 4, all four packed into one micro-batch, and packed with a budget that puts
    the full trace alone give the same loss and the same gradient of every weight. In the
    default averaging (per example): the token mode's sums under packing are the same code
    path, checked in both modes on the tiny model (test_packed_step_equals_the_padded_step)."""
    import copy

    from upft.data import encode_rows, turn_end
    from upft.train import load_model

    full = max((r for r in mixture if r["kind"] == "full"), key=lambda r: r["num_tokens"])
    prefixes = [r for r in mixture if r["kind"] == "prefix"][:3]
    encoded, _ = encode_rows([full, *prefixes], tokenizer, turn_end(tokenizer), 1024)
    lengths = [len(e["input_ids"]) for e in encoded]
    start = load_model(smollm2, resolve_config(None, {"dataset": "a/b", "output": "o"}))
    mode = "example"
    one, cap_one = train(copy.deepcopy(start), encoded, tmp_path / "u", 1, 4, mode, lr="1e-30")
    reference, [loss] = cap_one.grads[0], logged_losses(one)
    del one, cap_one
    for budget in (sum(lengths), max(lengths)):
        packed, cap = train(copy.deepcopy(start), encoded, tmp_path / f"p{budget}", 1, 4, mode,
                            lr="1e-30", packed=budget)  # fmt: skip
        gap = max_relative_gap(cap.grads[0], reference)
        print(f"{mode}, budget {budget}: loss {logged_losses(packed)[0]:.6f} vs {loss:.6f}, "
              f"largest gradient gap {gap:.2e} of the largest gradient")  # fmt: skip
        assert logged_losses(packed) == [pytest.approx(loss, rel=1e-5)]
        assert gap < 1e-4
        del packed, cap
