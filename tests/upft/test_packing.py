"""Packed micro-batches: grouping, the collator's layout, support detection and fallback.

Equal losses and gradients of packed and padded steps are tested with the trainer, in
test_loss.py; here the parts: first-fit-decreasing groups, a packed micro-batch's ids, labels
and restarting positions, the probe that decides whether a model keeps packed examples apart
(tiny random models of a supporting and a non-supporting architecture), the default and the
fallback line, and -- on the real SmolLM2 -- that a packed example's logits are its logits
alone.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from builder.errors import TrainError
from upft.config import resolve_config
from upft.packing import (
    CPU_TOKENS,
    IGNORE,
    MICRO_BATCHES,
    PackingCollator,
    check_support,
    decide,
    default_budget,
    pack,
)


def test_first_fit_decreasing_groups() -> None:
    # longest first: 45 alone (over the budget), then 12 + 11 share a group, 10 starts a third
    assert pack([45, 10, 11, 12], 24) == [[0], [2, 3], [1]]
    assert pack([45, 10, 11, 12], 100) == [[0, 1, 2, 3]]
    assert pack([5, 5, 5], 10) == [[0, 1], [2]]
    assert pack([], 10) == []
    lengths = [7, 3, 9, 1, 4, 8, 2, 6]
    groups = pack(lengths, 12)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 12 for g in groups)
    assert len(groups) == 4  # 40 tokens in bins of 12: the fewest possible


def test_collator_concatenates_restarts_positions_and_masks_each_first_label() -> None:
    import torch

    features = [
        {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
        {"input_ids": [4, 5], "labels": [4, 5]},  # its first label must not be trained across
        {"input_ids": [6, 7, 8, 9], "labels": [IGNORE, IGNORE, 8, 9]},
    ]
    step = PackingCollator(6)(features)
    parts = step[MICRO_BATCHES]
    # the 4- and 2-token examples fill the first micro-batch, in the order they came
    assert [p["input_ids"].tolist() for p in parts] == [[[4, 5, 6, 7, 8, 9]], [[1, 2, 3]]]
    assert parts[0]["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3]]
    assert parts[0]["labels"].tolist() == [[IGNORE, 5, IGNORE, IGNORE, 8, 9]]
    assert parts[1]["labels"].tolist() == [[IGNORE, 2, 3]]
    assert "attention_mask" not in parts[0]  # the positions alone mark the boundaries
    assert parts[0]["input_ids"].dtype == torch.long
    flash = PackingCollator(6, flash_kwargs=True)(features)[MICRO_BATCHES][0]
    assert flash["cu_seq_lens_q"].tolist() == [0, 2, 6]


def test_default_budget_per_device() -> None:
    assert default_budget(cuda=True, max_length=4096) == 4096  # no more memory than unpacked
    assert default_budget(cuda=True, max_length=16384) == 16384
    assert default_budget(cuda=False, max_length=4096) == CPU_TOKENS
    assert default_budget(cuda=False, max_length=512) == 512


def llama(attention: str = "sdpa") -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, attn_implementation=attention,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def bloom() -> Any:
    """A real architecture whose attention (ALiBi, no position ids) cannot keep packed
    examples apart."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    return BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2)).eval()


def test_support_is_detected_from_the_model() -> None:
    assert check_support(llama("sdpa"), None) == (
        True,
        "sdpa attention with a block-causal mask from the restarting positions",
    )
    assert check_support(llama("eager"), None)[0] is True
    assert check_support(bloom(), None) == (
        False,
        "BloomForCausalLM with eager attention lets packed examples attend to each other "
        "(checked on a packed pair)",
    )
    supported, why = check_support(llama(), "deepspeed")
    assert not supported and why.startswith("DeepSpeed counts gradient accumulation itself")


def test_default_packs_where_supported_and_falls_back_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="upft.packing"):
        on = decide(None, None, 4096, llama(), cuda=False)
    assert (on.enabled, on.micro_batch_tokens, on.attention) == (True, CPU_TOKENS, "sdpa")
    assert caplog.messages == [
        "packing examples into micro-batches of up to 512 tokens: sdpa attention with a "
        "block-causal mask from the restarting positions"
    ]
    assert decide(None, 300, 4096, llama(), cuda=True).micro_batch_tokens == 300
    assert decide(None, None, 2048, llama(), cuda=True).micro_batch_tokens == 2048

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="upft.packing"):
        off = decide(None, None, 4096, bloom(), cuda=False)
    assert not off.enabled and off.micro_batch_tokens is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "packing is off: BloomForCausalLM with eager attention lets packed examples attend "
            "to each other (checked on a packed pair); micro-batches are padded instead",
        )
    ]
    assert off.describe() == {
        "enabled": False,
        "reason": off.reason,
        "attention": "eager",
        "micro_batch_tokens": None,
    }
    assert decide(False, None, 4096, llama(), cuda=False).reason == "packing = false (set)"
    with pytest.raises(TrainError, match=r"^packing = true, but BloomForCausalLM with eager "):
        decide(True, None, 4096, bloom(), cuda=False)


def test_packing_settings_are_checked() -> None:
    base = {"dataset": "a/b", "output": "o"}
    config = resolve_config(None, base)
    assert (config.packing, config.micro_batch_tokens, config.attn_implementation) == (
        None,
        None,
        None,
    )
    config = resolve_config(None, {**base, "packing": "false", "micro_batch_tokens": "512"})
    assert (config.packing, config.micro_batch_tokens) == (False, 512)
    with pytest.raises(TrainError) as bad:
        resolve_config(None, {**base, "micro_batch_tokens": "8"})
    assert str(bad.value) == (
        "micro_batch_tokens = '8' (from --micro-batch-tokens) must be at least 16; a chat "
        "example needs more"
    )
    with pytest.raises(TrainError) as bad:
        resolve_config(None, {**base, "attn_implementation": "fast"})
    assert str(bad.value) == (
        "attn_implementation = 'fast' (from --attn-implementation) is not one of sdpa, eager, "
        "flex_attention, flash_attention_2, flash_attention_3"
    )


@pytest.mark.slow
def test_packed_examples_give_their_own_logits_on_smollm2(
    smollm2: Any, tokenizer: Any, mixture: list[dict[str, Any]]
) -> None:
    """Real SmolLM2 (SDPA): three fixture examples (a full trace and two prefixes) packed into
    one row give, at every position, the logits each gives alone."""
    import torch

    from upft.config import resolve_config
    from upft.data import encode_rows, turn_end
    from upft.train import load_model

    chosen = [next(r for r in mixture if r["kind"] == "full")]
    chosen += [r for r in mixture if r["kind"] == "prefix"][:2]
    encoded, _ = encode_rows(chosen, tokenizer, turn_end(tokenizer), 1024)
    model = load_model(smollm2, resolve_config(None, {"dataset": "a/b", "output": "o"})).eval()
    assert check_support(model, None)[0]
    [packed] = PackingCollator(4096)(encoded)[MICRO_BATCHES]
    with torch.no_grad():
        together = model(**packed, use_cache=False).logits[0]
        start, worst, scale = 0, 0.0, 0.0
        for item in encoded:
            alone = model(torch.tensor([item["input_ids"]]), use_cache=False).logits[0]
            part = together[start : start + len(alone)]
            worst = max(worst, float((part - alone).abs().max()))
            scale = max(scale, float(alone.abs().max()))
            start += len(alone)
        unmarked = model(packed["input_ids"], use_cache=False).logits[0]
    assert start == together.shape[0]
    print(f"largest logit gap {worst:.2e} (largest logit {scale:.1f})")
    assert worst < 2e-4
    # without the restarting positions the later examples do attend to the earlier ones
    assert float((unmarked[start - len(alone) :] - alone).abs().max()) > 1.0
