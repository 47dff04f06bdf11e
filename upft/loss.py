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
"""

from __future__ import annotations

from typing import Any

IGNORE = -100  # label of a position that is not supervised (masked prompt, padding)


def loss_sum(logits: Any, labels: Any, mode: str) -> Any:
    """Summed loss terms of one micro-batch (causal shift: position t predicts label t+1).

    ``example``: the sum over rows of each row's mean token loss; ``token``: the sum of every
    supervised token's loss. Divide by :func:`count_items` over the effective batch.
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()  # float32 softmax, as transformers' own loss
    shift_labels = labels[:, 1:].to(shift_logits.device)
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(shift_labels.shape)
    if mode == "token":
        return per_token.sum()
    counts = (shift_labels != IGNORE).sum(-1)
    return (per_token.sum(-1) / counts.clamp(min=1)).sum()


def count_items(labels: Any, mode: str) -> Any:
    """Examples with at least one supervised token (``example``) or supervised tokens."""
    supervised = labels[:, 1:] != IGNORE
    return supervised.any(-1).sum() if mode == "example" else supervised.sum()


def trainer_class() -> type:
    """``UpftTrainer``: transformers' ``Trainer`` with the loss above (imported lazily)."""
    import torch
    from transformers import Trainer

    class UpftTrainer(Trainer):
        """``Trainer`` whose loss averages per example (or per token) over the effective batch."""

        # compute_loss divides by the count over all accumulated micro-batches already.
        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, loss_averaging: str = "example", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.loss_averaging = loss_averaging

        def get_batch_samples(
            self, epoch_iterator: Any, num_batches: int, device: Any
        ) -> tuple[list[Any], Any]:
            batches: list[Any] = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:  # the last optimizer step of an epoch may be short
                    break
            count = torch.zeros((), dtype=torch.long, device=device)
            for batch in batches:
                count += count_items(batch["labels"], self.loss_averaging).to(device)
            if self.args.world_size > 1:  # every process divides by the global count
                count = self.accelerator.gather(count.reshape(1)).sum()
            return batches, count

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            total = loss_sum(outputs.logits, labels, self.loss_averaging)
            if num_items_in_batch is None:  # called outside the training loop: this batch alone
                divisor = count_items(labels, self.loss_averaging).clamp(min=1)
                loss = total / divisor.to(total.device)
            else:
                loss = total / torch.as_tensor(num_items_in_batch).clamp(min=1).to(total.device)
                if self.args.world_size > 1:
                    # DDP averages gradients over processes; undo that so the global sum
                    # divided by the global count is what each parameter receives.
                    loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return UpftTrainer
