"""Packed micro-batches for ``upft-train``: examples concatenated without padding, up to a budget.

Part of the training run (``upft.train`` decides whether to pack and hands the collator below to
the trainer of ``upft.loss``). With packing, each dataloader item is one optimizer step's share
of examples for this process -- ``batch_size / processes`` examples, drawn by the stock sampler
in the same order as an unpacked run -- and :class:`PackingCollator` cuts that share into
micro-batches of at most ``micro_batch_tokens`` tokens (first-fit decreasing; an example longer
than the budget gets a micro-batch of its own). Each micro-batch is one row without padding,
built by transformers' ``DataCollatorWithFlattening``: ``position_ids`` restart at 0 for every
example, and the first label of every example is masked, so no token predicts across a boundary.

Attention respects the boundaries because transformers reads them from those ``position_ids``
when no attention mask is passed: with SDPA or eager attention it builds a block-causal mask,
with FlashAttention it runs the variable-length kernel. :func:`check_support` confirms it on the
loaded model (a packed pair of short sequences must give the logits each gives alone) before a
run packs; where it does not hold, or where sharded training (DeepSpeed) keeps its own
accumulation count, the run falls back to padded micro-batches and says why in one line.

The loss is unchanged by packing: ``upft.loss`` finds each example's tokens from the restarting
positions, so ``example`` averaging still weighs every example once, and the divisor is still
the number of examples (or supervised tokens) in the whole effective batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

IGNORE = -100
MICRO_BATCHES = "micro_batches"  # key of a packed step's list of micro-batches
# Attention implementations that follow packed position_ids (transformers' masking utilities
# build a block-causal mask for the first three; the flash kernels run variable-length).
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
ATTENTION = MASKED_ATTENTION + VARLEN_ATTENTION
# Default token budget on CPU: a micro-batch costs a fixed pass over every weight and gradient
# plus a share per token, and SDPA's block-causal mask computes the masked blocks too, so a
# middle size is fastest (bench/README.md, "Packing").
CPU_TOKENS = 512


def default_budget(cuda: bool, max_length: int) -> int:
    """Tokens per packed micro-batch when ``micro_batch_tokens`` is not set.

    GPU: ``max_length``, the longest example the run admits, so a packed micro-batch never needs
    more memory than the largest unpacked one. CPU: :data:`CPU_TOKENS` (or ``max_length`` if
    smaller), the speed optimum.
    """
    return max_length if cuda else min(CPU_TOKENS, max_length)


def pack(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group example indices into micro-batches of at most ``budget`` tokens (first-fit
    decreasing, deterministic); an example longer than the budget is a group of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for g, left in enumerate(room):
            if lengths[i] <= left:
                groups[g].append(i)
                room[g] -= lengths[i]
                break
        else:
            groups.append([i])
            room.append(budget - lengths[i])
    return [sorted(g) for g in groups]


@dataclass
class PackingCollator:
    """One step's share of examples -> ``{"micro_batches": [packed micro-batch, ...]}``.

    ``flash_kwargs``: also pass the sequence boundaries as FlashAttention's ``cu_seq_lens``
    (saves the kernel recomputing them from the positions).
    """

    budget: int
    flash_kwargs: bool = False

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from transformers import DataCollatorWithFlattening

        flatten = DataCollatorWithFlattening(
            return_position_ids=True,
            separator_id=IGNORE,
            return_flash_attn_kwargs=self.flash_kwargs,
        )
        groups = pack([len(f["input_ids"]) for f in features], self.budget)
        return {MICRO_BATCHES: [flatten([features[i] for i in group]) for group in groups]}


def empty_micro_batch(pad_token_id: int) -> dict[str, Any]:
    """A one-token micro-batch that supervises nothing: sharded training (FSDP) needs every
    process to run the same number of forward passes per step, whatever its packing gave."""
    import torch

    return {
        "input_ids": torch.tensor([[pad_token_id]]),
        "labels": torch.tensor([[IGNORE]]),
        "position_ids": torch.tensor([[0]]),
    }


def attention_of(model: Any) -> str:
    """The attention implementation a loaded model runs (transformers' config attribute)."""
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


def sharded_backend() -> str | None:
    """``deepspeed`` or ``fsdp`` when ``accelerate launch`` configured one (its env flags)."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def packs_correctly(model: Any, vocab: int, tolerance: float = 1e-3) -> bool:
    """Do two short sequences packed into one row give the logits each gives alone?"""
    import torch

    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab, (5,), generator=generator)
    second = torch.randint(0, vocab, (7,), generator=generator)
    device = next(model.parameters()).device
    with torch.no_grad():
        alone = [
            model(input_ids=s[None].to(device), use_cache=False).logits[0] for s in (first, second)
        ]
        packed = model(
            input_ids=torch.cat([first, second])[None].to(device),
            position_ids=torch.cat([torch.arange(5), torch.arange(7)])[None].to(device),
            use_cache=False,
        ).logits[0]
    scale = max(float(a.abs().max()) for a in alone) or 1.0
    worst = max(
        float((packed[:5] - alone[0]).abs().max()), float((packed[5:] - alone[1]).abs().max())
    )
    return worst <= tolerance * scale


def check_support(model: Any, sharded: str | None) -> tuple[bool, str]:
    """(whether this run can pack, the reason in words) for a loaded, not yet wrapped model."""
    attention = attention_of(model)
    if sharded == "deepspeed":
        return False, (
            "DeepSpeed counts gradient accumulation itself, so a step cannot hold a varying "
            "number of packed micro-batches"
        )
    if attention in VARLEN_ATTENTION:
        return True, f"{attention} runs each packed example as its own sequence (varlen)"
    if attention not in MASKED_ATTENTION:
        return False, f"attention implementation {attention!r} has no packed-sequence support"
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab <= 0 or not packs_correctly(model, vocab):
        return False, (
            f"{type(model).__name__} with {attention} attention lets packed examples attend "
            "to each other (checked on a packed pair)"
        )
    return True, f"{attention} attention with a block-causal mask from the restarting positions"


@dataclass(frozen=True)
class PackingChoice:
    """Whether a run packs, why, and with which token budget and attention."""

    enabled: bool
    reason: str
    attention: str
    micro_batch_tokens: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "reason": self.reason,
            "attention": self.attention,
            "micro_batch_tokens": self.micro_batch_tokens,
        }


def decide(
    requested: bool | None, budget: int | None, max_length: int, model: Any, cuda: bool
) -> PackingChoice:
    """Pack or not (``requested`` None: wherever supported), for a loaded, unwrapped model.

    An unsupported default falls back to padded micro-batches with one warning line; an
    explicit ``packing = true`` that cannot be honoured is an error.
    """
    from builder.errors import TrainError

    attention = attention_of(model)
    if requested is False:
        return PackingChoice(False, "packing = false (set)", attention)
    ok, why = check_support(model, sharded_backend())
    if not ok:
        if requested:
            raise TrainError(f"packing = true, but {why}; drop --packing to train unpacked")
        logger.warning("packing is off: %s; micro-batches are padded instead", why)
        return PackingChoice(False, why, attention)
    tokens = budget or default_budget(cuda, max_length)
    logger.info("packing examples into micro-batches of up to %d tokens: %s", tokens, why)
    return PackingChoice(True, why, attention, tokens)
