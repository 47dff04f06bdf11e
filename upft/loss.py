"""The training loss of ``upft-train``: each example counts once, or each supervised token.

Used by the training run (``upft.train``) in place of the stock ``Trainer`` loss. UPFT's share
of full traces, p, is a share of *examples*: the official setup (micro-batch 1, OpenRLHF)
averages the loss over an example's supervised tokens and then over the examples of the
effective batch. The stock loss instead averages over every supervised token of the effective
batch, so a 300-token full trace would weigh ten times a 30-token prefix and p would no longer
mean what it says. Two modes:

* ``example`` (default): ``(1 / E) * sum_i mean_t loss_it``, E = examples in the effective batch
  (micro-batch x accumulation x processes, fewer in a last partial batch);
* ``token``: ``(1 / T) * sum_i sum_t loss_it``, T = supervised tokens in the effective batch.

Both need a count over the whole accumulated batch before the first micro-batch's backward
pass. ``Trainer`` already collects the micro-batches of one optimizer step up front
(``get_batch_samples``) and hands their count to ``compute_loss`` as ``num_items_in_batch``; our
subclass counts examples or tokens there (summed over processes), divides each micro-batch's
summed loss by it, and tells ``Trainer`` the loss is already scaled for accumulation. The
result is independent of how the effective batch is split into micro-batches.

A micro-batch is either padded rows (one example per row) or one packed row (``upft.packing``:
several examples, ``position_ids`` restarting at 0 for each); an example is a row, or a run of
positions in a packed row, so both averages are the same whichever way the batch was cut. With
packing a dataloader item is one optimizer step's share of examples, split into packed
micro-batches; ``training_step`` runs them one after the other, synchronising gradients across
processes only after the last. The model computes output logits only where a label is
supervised (``logits_to_keep``, where the model accepts it): the prompt's positions need none,
and the vocabulary projection is a large share of a small model's work.
"""

from __future__ import annotations

import contextlib
from typing import Any

IGNORE = -100  # label of a position that is not supervised (masked prompt, padding)
MICRO_BATCHES = "micro_batches"  # a packed step's list of micro-batches (upft.packing)


def example_ids(labels: Any, position_ids: Any = None) -> Any:
    """(rows, length) id of the example each position belongs to, unique in the micro-batch:
    its row, or in a packed row (``position_ids`` given) the run its restarting positions mark."""
    import torch

    rows, length = labels.shape
    ids = torch.arange(rows, device=labels.device).unsqueeze(1) * (length + 1)
    if position_ids is None:
        return ids.expand(rows, length)
    return ids + (position_ids.to(labels.device) == 0).cumsum(-1)


def supervised_positions(labels: Any) -> Any:
    """Positions whose output logits a loss needs: t where some row supervises label t + 1."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().flatten()


def loss_sum(
    logits: Any, labels: Any, mode: str, position_ids: Any = None, kept: Any = None
) -> Any:
    """Summed loss terms of one micro-batch (causal shift: position t predicts label t+1).

    ``example``: the sum over examples of each one's mean token loss; ``token``: the sum of every
    supervised token's loss. Divide by :func:`count_items` over the effective batch.
    ``position_ids``: a packed micro-batch's positions (examples are the runs they mark).
    ``kept``: the positions ``logits`` holds (``logits_to_keep``); None for all of them.
    """
    import torch
    import torch.nn.functional as F

    owners = example_ids(labels, position_ids)
    if kept is None:
        logits, targets, owners = logits[:, :-1, :], labels[:, 1:], owners[:, 1:]
    else:
        targets, owners = labels[:, kept + 1], owners[:, kept + 1]
    targets = targets.to(logits.device)
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),  # float32 softmax, as transformers' own
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(targets.shape)
    if mode == "token":
        return per_token.sum()
    supervised = targets != IGNORE
    owners = owners.to(logits.device)
    tokens = torch.bincount(owners[supervised], minlength=labels.shape[0] * (labels.shape[1] + 1))
    weights = torch.where(supervised, 1.0 / tokens[owners].clamp(min=1), 0.0)
    return (per_token * weights).sum()


def count_items(labels: Any, mode: str, position_ids: Any = None) -> Any:
    """Examples with at least one supervised token (``example``) or supervised tokens."""
    import torch

    supervised = labels[:, 1:] != IGNORE
    if mode != "example":
        return supervised.sum()
    owners = example_ids(labels, position_ids)[:, 1:][supervised]
    return (torch.bincount(owners, minlength=1) > 0).sum()


def micro_batches(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The micro-batches of one dataloader item: a packed step's list, or the item itself."""
    parts = batch.get(MICRO_BATCHES)
    return list(parts) if parts is not None else [batch]


def batch_counts(batch: dict[str, Any]) -> list[Any]:
    """[examples, supervised tokens, input tokens, positions computed] of one micro-batch."""
    labels = batch["labels"]
    mask = batch.get("attention_mask")
    return [
        count_items(labels, "example", batch.get("position_ids")),
        count_items(labels, "token"),
        mask.sum() if mask is not None else labels.new_tensor(labels.numel()),
        labels.new_tensor(labels.numel()),
    ]


# What the optimizer steps covered: the first four from batch_counts, then forward passes.
COUNTS = ("examples", "supervised_tokens", "input_tokens", "positions", "passes")


def step_totals(
    parts: list[dict[str, Any]], device: Any, accelerator: Any, world_size: int
) -> tuple[Any, int]:
    """The ``COUNTS`` of one optimizer step's micro-batches summed over all processes, as one
    tensor (the last entry: forward passes), and the forward passes of the busiest process."""
    import torch

    totals = torch.zeros(len(COUNTS), dtype=torch.long, device=device)
    for part in parts:
        totals[:-1] += torch.stack(batch_counts(part)).to(device)
    totals[-1] = len(parts)
    if world_size == 1:
        return totals, len(parts)
    # every process divides by the global count
    gathered = accelerator.gather(totals.reshape(1, -1)).reshape(-1, len(totals))
    return gathered.sum(0), int(gathered[:, -1].max())


def trainer_class() -> type:
    """``UpftTrainer``: transformers' ``Trainer`` with the loss above (imported lazily)."""
    import torch
    from transformers import Trainer

    class UpftTrainer(Trainer):
        """``Trainer`` whose loss averages per example (or per token) over the effective batch.

        ``keep_logits``: ask the model for the supervised positions' logits only.
        ``even_micro_batches``: give every process the same number of packed micro-batches per
        step (FSDP gathers weights collectively in every forward pass).
        ``seen``: what the optimizer steps of this ``train()`` call covered, over all processes.
        """

        # compute_loss divides by the count over all accumulated micro-batches already.
        loss_is_scaled_for_ga = True

        def __init__(
            self,
            *args: Any,
            loss_averaging: str = "example",
            keep_logits: bool = False,
            even_micro_batches: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.loss_averaging = loss_averaging
            self.keep_logits = keep_logits
            self.even_micro_batches = even_micro_batches
            self.seen = dict.fromkeys(COUNTS, 0)

        def get_batch_samples(
            self, epoch_iterator: Any, num_batches: int, device: Any
        ) -> tuple[list[Any], Any]:
            batches: list[Any] = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:  # the last optimizer step of an epoch may be short
                    break
            parts = [part for batch in batches for part in micro_batches(batch)]
            totals, most = step_totals(parts, device, self.accelerator, self.args.world_size)
            if self.even_micro_batches and batches and MICRO_BATCHES in batches[-1]:
                from upft.packing import empty_micro_batch

                pad = getattr(self.processing_class, "pad_token_id", None) or 0
                extra = [empty_micro_batch(pad) for _ in range(most - len(parts))]
                batches[-1][MICRO_BATCHES].extend(extra)
            for key, value in zip(COUNTS, totals.tolist(), strict=True):
                self.seen[key] += value
            return batches, totals[0] if self.loss_averaging == "example" else totals[1]

        def training_step(
            self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
        ) -> Any:
            parts = inputs.get(MICRO_BATCHES)
            if parts is None:
                return super().training_step(model, inputs, num_items_in_batch)
            total = None
            for i, part in enumerate(parts):
                # Gradients are synchronised across processes once, after the last part.
                last = i == len(parts) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    loss = super().training_step(model, part, num_items_in_batch)
                total = loss if total is None else total + loss
            return total

        def floating_point_ops(self, inputs: dict[str, Any]) -> int:
            return sum(
                super(UpftTrainer, self).floating_point_ops(p) for p in micro_batches(inputs)
            )

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs["labels"]
            position_ids = inputs.get("position_ids")  # present in packed micro-batches only
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            kept = supervised_positions(labels) if self.keep_logits else None
            if kept is not None:
                model_inputs["logits_to_keep"] = kept
            outputs = model(**model_inputs)
            total = loss_sum(outputs.logits, labels, self.loss_averaging, position_ids, kept)
            if num_items_in_batch is None:  # called outside the training loop: this batch alone
                divisor = count_items(labels, self.loss_averaging, position_ids).clamp(min=1)
                loss = total / divisor.to(total.device)
            else:
                loss = total / torch.as_tensor(num_items_in_batch).clamp(min=1).to(total.device)
                if self.args.world_size > 1:
                    # DDP averages gradients over processes; undo that so the global sum
                    # divided by the global count is what each parameter receives.
                    loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return UpftTrainer
