"""The training run: fine-tune a model on a UPFT mixture and write a loadable model folder.

Third stage of the trainer, after ``upft.config`` (settings) and ``upft.data`` (rows -> masked
sequences); ``upft.output`` then writes the card and the summary and may push the folder.

Why transformers' ``Trainer`` with our own collator rather than TRL's ``SFTTrainer``: TRL 1.16
builds the completion mask of a conversational prompt-completion row by rendering prompt +
completion through the chat template and supervising everything after the prompt. With ChatML
that includes the newline the template writes after ``<|im_end|>`` (checked: the label of that
``\\n`` token is 198, not -100), and the joint tokenisation may also re-segment the sampled
prefix. UPFT's target is exactly the sampled prefix tokens plus the end-of-turn token, so we
tokenise ourselves (``upft.data``); with tokenised rows SFTTrainer would add nothing but
another layer of defaults. The optimisation itself (AdamW, schedule, accumulation, mixed
precision, progress bars and logging, distributed launch) is the stock ``Trainer``; the loss
is ours (``upft.loss``: each example counts once by default, as in the paper), and so is how a
step's examples become forward passes (``upft.packing``: packed without padding where the
model supports it). ``upft.precision`` picks bf16 or float32 from the device and CPU flags.

:func:`run_training` reads as the stages of a run: prepare the output folder, load and encode
the data, load the model, decide packing, build the trainer, train, summarise, save.

Long runs save a checkpoint (weights, optimizer, scheduler, RNG and data position) every
``save_steps`` optimizer steps under ``<output>/trainer/``; ``--resume`` continues from the
newest one with the settings saved in ``<output>/train_config.yaml`` at the start of the run.
The checkpoints are removed once the finished model is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import ModelError, TrainError
from builder.logs import quiet_library_bars
from builder.models import ResolvedModel, load_tokenizer, resolve_model
from upft import packing as packing_mod
from upft import precision as precision_mod
from upft import teacher
from upft.config import TrainConfig, resolve_config, write_config
from upft.data import (
    CompletionCollator,
    DatasetSource,
    EncodeStats,
    TurnEnd,
    encode_rows,
    open_dataset,
    turn_end,
)
from upft.packing import PackingChoice, PackingCollator
from upft.precision import Precision

logger = logging.getLogger(__name__)

TRAINER_DIR = "trainer"  # checkpoints of a run in progress, inside the output folder
# Settings that change what a run computes: a resumed run must keep them as they were.
RESUME_FIXED = (
    "dataset", "revision", "dataset_config", "model", "model_revision", "learning_rate",
    "lr_scheduler", "warmup_ratio", "optimizer", "weight_decay", "max_grad_norm", "batch_size",
    "micro_batch_size", "epochs", "max_steps", "max_length", "bf16", "seed", "loss_averaging",
    "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "eos_token",
    "teacher_prefixes",
    "packing",  # packed steps are one dataloader item each: the data position counts them
)  # fmt: skip


def last_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder (its trainer state is written last)."""
    found = []
    for path in trainer_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def prepare_output(folder: Path, overwrite: bool, resume: bool = False) -> Path | None:
    """Make the output folder ready; with ``resume`` return the checkpoint to continue from.

    A fresh run refuses a folder that already holds files (unless told to overwrite) and never
    picks up checkpoints left there by an earlier run.
    """
    if folder.exists() and not folder.is_dir():
        raise TrainError(f"output {str(folder)!r} is a file; pass a folder path with --output")
    trainer_dir = folder / TRAINER_DIR
    if resume:
        checkpoint = last_checkpoint(trainer_dir)
        if checkpoint is None:
            raise TrainError(
                f"--resume: no checkpoint in {str(trainer_dir)!r}; a run saves one every "
                "save_steps optimizer steps and removes them when it finishes. Start the run "
                "without --resume"
            )
        return checkpoint
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        unfinished = last_checkpoint(trainer_dir) is not None
        hint = "it holds checkpoints of an unfinished run: pass --resume to continue it, "
        raise TrainError(
            f"output folder {str(folder)!r} is not empty; {hint if unfinished else ''}"
            "pass --overwrite to write into it or choose another --output"
        )
    shutil.rmtree(trainer_dir, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return None


def check_resume(config: TrainConfig, folder: Path) -> TrainConfig:
    """A resumed run must compute what the interrupted one did: same settings as it saved.

    Returns ``config`` with the saved packing decision when none is given (a config saved
    before packing existed trained unpacked).
    """
    saved_path = folder / "train_config.yaml"
    if not saved_path.is_file():
        raise TrainError(
            f"--resume: {str(saved_path)!r} is missing, so the interrupted run's settings are "
            "unknown; start the run again without --resume"
        )
    saved = resolve_config(saved_path, {})
    if saved.packing is None:
        saved = saved.model_copy(update={"packing": False})
    if config.packing is None:
        config = config.model_copy(update={"packing": saved.packing})
    changed = [
        f"{key} ({getattr(saved, key)!r} -> {getattr(config, key)!r})"
        for key in RESUME_FIXED
        if getattr(saved, key) != getattr(config, key)
    ]
    if changed:
        raise TrainError(
            f"--resume: these settings differ from the interrupted run's ({saved_path}): "
            + ", ".join(changed)
            + f"; resume with the saved settings: upft-train --config {saved_path} --resume"
        )
    return config


def choose_model(config: TrainConfig, source: DatasetSource) -> tuple[str, str | None]:
    """The model spec to train: the flag, or else the model the dataset was sampled with."""
    built = source.built_with
    if config.model is None:
        if not built.get("id"):
            raise TrainError(
                "no --model given and the dataset's manifest names no model; pass --model"
            )
        logger.info("training the model the dataset was sampled with: %s", built["id"])
        return str(built["id"]), config.model_revision or built.get("revision")
    if built.get("id") and built["id"] != config.model and not config.teacher_prefixes:
        logger.warning(
            "the dataset was sampled with %s but you train %s; UPFT trains a model on its own "
            "prefixes",
            built["id"],
            config.model,
        )
    elif config.model_revision is None and built.get("revision"):
        # Same model as the sampler: default to the exact weights that wrote the prefixes.
        return config.model, str(built["revision"])
    return config.model, config.model_revision


def _hub_revision(model: ResolvedModel) -> str | None:
    # Local folders (and converted embedded models) carry a descriptive revision, not a Hub one.
    return None if Path(model.path).is_dir() else model.revision


def generation_eos(model: ResolvedModel) -> list[int]:
    """End-of-sequence ids of the model's generation config (Llama 3 lists several)."""
    from transformers import GenerationConfig

    revision = _hub_revision(model)
    try:
        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        gen = GenerationConfig.from_pretrained(model.path, **kwargs)
    except OSError:
        return []
    eos = gen.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def load_model(model: ResolvedModel, config: TrainConfig) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    try:
        # float32 master weights: at lr 1e-6 a bf16 weight would swallow most updates.
        net: Any = AutoModelForCausalLM.from_pretrained(
            model.path, revision=_hub_revision(model), dtype=torch.float32, **kwargs
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"cannot load model {model.spec!r}: {exc}") from None
    if config.lora:
        from peft import LoraConfig, get_peft_model

        modules = config.lora_target_modules
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=modules[0] if modules == ["all-linear"] else modules,
            task_type="CAUSAL_LM",
        )
        try:
            net = get_peft_model(net, lora)
        except ValueError as exc:
            raise TrainError(
                f"lora_target_modules = {modules!r} do not fit the model: {exc}"
            ) from None
        if config.gradient_checkpointing:
            net.enable_input_require_grads()
    return net


def base_model(net: Any) -> Any:
    """The transformers model inside a peft wrapper (or ``net`` itself)."""
    get_base = getattr(net, "get_base_model", None)
    return get_base() if callable(get_base) else net


def accepts_logits_to_keep(net: Any) -> bool:
    """Can the model compute output logits for chosen positions only (``logits_to_keep``)?"""
    import inspect

    return "logits_to_keep" in inspect.signature(base_model(net).forward).parameters


def training_arguments(
    config: TrainConfig, folder: Path, bf16: bool, quiet: bool, packing: bool = False
) -> Any:
    """transformers' ``TrainingArguments`` for ``config``; checkpoints go under ``folder``.

    ``packing``: one dataloader item per optimizer step and process (its share of the effective
    batch, cut into packed micro-batches by the collator), so no accumulation count of its own.
    """
    import torch
    from transformers import TrainingArguments

    per_device = config.batch_size // config.world_size() if packing else config.micro_batch_size
    try:
        return TrainingArguments(
            output_dir=str(folder),
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=1 if packing else config.gradient_accumulation_steps(),
            num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler,
            # A float below 1 is read as a share of the total steps.
            warmup_steps=config.warmup_ratio,
            optim=config.optimizer,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            bf16=bf16,
            gradient_checkpointing=config.gradient_checkpointing,
            seed=config.seed,
            data_seed=config.seed,
            logging_steps=config.logging_steps,
            save_strategy="steps" if config.save_steps else "no",
            save_steps=config.save_steps or 500,  # unused when save_strategy is "no"
            save_total_limit=config.save_total_limit,
            report_to="none",
            disable_tqdm=quiet,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            # Without CUDA, accelerate only goes data parallel (gloo) under torchrun when told
            # the run is on CPU; otherwise every process would train alone on all the data.
            use_cpu=not torch.cuda.is_available(),
        )
    except ValueError as exc:
        raise TrainError(f"invalid training settings: {exc}") from None


def _final_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return float(losses[-1]) if losses else None


def base_dtype(model: ResolvedModel) -> Any:
    """The dtype the base checkpoint is stored in (the trained model is saved the same way)."""
    import torch
    from transformers import AutoConfig

    if model.spec.startswith("embedded:"):
        # Stored in bf16 only so that vLLM converts nothing; a 135M model trained at lr 1e-6
        # keeps its float32 result (in bf16 most updates would round away).
        return None
    revision = _hub_revision(model)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    try:
        dtype = getattr(AutoConfig.from_pretrained(model.path, **kwargs), "dtype", None)
    except (OSError, ValueError):
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else None


def save_model(
    trainer: Any,
    tokenizer: Any,
    folder: Path,
    config: TrainConfig,
    eot: Any,
    save_dtype: Any,
    state: dict[str, Any] | None = None,
) -> None:
    """Write a plain model folder (LoRA merged) that transformers and vLLM load directly.

    Weights are trained in float32 and saved in the base checkpoint's dtype, so a bf16 base
    gives a bf16 folder of the same size. ``state``: the whole state dict, gathered from the
    processes of a sharded run (FSDP, ZeRO-3); the model object then holds only shards.
    """
    net = trainer.accelerator.unwrap_model(trainer.model)
    if state is not None:
        if config.lora:
            raise TrainError(
                "LoRA under FSDP / ZeRO-3 is not supported; train LoRA with "
                "torchrun (data parallel) or on one GPU"
            )
        if save_dtype is not None:
            state = {k: v.to(save_dtype) if v.is_floating_point() else v for k, v in state.items()}
    if config.lora:
        net.save_pretrained(str(folder / "adapter"))
        net = net.merge_and_unload()
    # Generation must stop where training taught the model to stop.
    eos = net.generation_config.eos_token_id
    known = [eos] if isinstance(eos, int) else list(eos or [])
    missing = sorted(set(eot.eot_ids) - set(known))
    if missing:
        net.generation_config.eos_token_id = known + missing
    net.config.use_cache = True  # training turns the KV cache off; inference wants it back
    if state is not None:
        net.save_pretrained(str(folder), state_dict=state)
        tokenizer.save_pretrained(str(folder))
        return
    if save_dtype is not None and save_dtype != net.dtype:
        net = net.to(save_dtype)
    net.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclass
class TrainingData:
    """What a run trains on: the encoded examples, where they came from, the model to tune."""

    encoded: list[dict[str, list[int]]]
    stats: EncodeStats
    source: DatasetSource
    spec: str
    model: ResolvedModel
    tokenizer: Any
    eot: TurnEnd


def load_training_data(config: TrainConfig) -> TrainingData:
    """Open the dataset, pick the model and its tokenizer, and encode every row."""
    rows, source = open_dataset(str(config.dataset), config.revision, config.dataset_config)
    teacher.check(config, source)
    spec, revision = choose_model(config, source)
    model = resolve_model(spec, revision)
    # A teacher's chat template (from its recipe) is not the student's: the student keeps its own.
    template = None if config.teacher_prefixes else source.chat_template
    tokenizer = load_tokenizer(model, True, template)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eot = turn_end(tokenizer, config.eos_token, generation_eos(model))
    encoded, stats = encode_rows(rows, tokenizer, eot, config.max_length, config.teacher_prefixes)
    total = sum(stats.examples.values())
    logger.info(
        "%d examples (%d prefix, %d full), %d supervised tokens",
        total,
        stats.examples["prefix"],
        stats.examples["full"],
        sum(stats.supervised_tokens.values()),
    )
    if total < config.batch_size:
        logger.warning(
            "the dataset has %d examples, fewer than one effective batch (%d): every optimizer "
            "step sees all of them; lower --batch-size for more, smaller steps",
            total,
            config.batch_size,
        )
    return TrainingData(encoded, stats, source, spec, model, tokenizer, eot)


def start_run(config: TrainConfig, folder: Path, resume: bool) -> Path | None:
    """Check what must fail before training and make the output folder ready; with ``resume``
    return the checkpoint to continue from."""
    if config.eval:  # a bad eval config must fail before training, not after
        from upft.evaluation.cli import check_inputs
        from upft.evaluation.config import resolve_config as resolve_eval

        check_inputs(resolve_eval(config.eval, {"model": str(folder), "card": str(folder)}), False)
    if _main_process():
        return prepare_output(folder, config.overwrite, resume)
    # rank 0 checks and prepares the folder; the others must not see its first writes
    return last_checkpoint(folder / TRAINER_DIR) if resume else None


def build_trainer(
    config: TrainConfig,
    data: TrainingData,
    net: Any,
    packing: PackingChoice,
    folder: Path,
    quiet: bool,
    callbacks: list[Any] | None,
) -> Any:
    """The ``UpftTrainer`` for this run: padded or packed micro-batches, our loss."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from upft.loss import trainer_class

    collator: Any = CompletionCollator(data.tokenizer.pad_token_id)
    if packing.enabled:
        assert packing.micro_batch_tokens is not None
        flash = packing.attention in packing_mod.VARLEN_ATTENTION
        collator = PackingCollator(packing.micro_batch_tokens, flash_kwargs=flash)
        if config.micro_batch_size != 1:
            logger.info("micro_batch_size is not used when packing (micro_batch_tokens is)")
    trainer = trainer_class()(
        model=net,
        args=training_arguments(
            config, folder / TRAINER_DIR, bool(config.bf16), quiet, packing.enabled
        ),
        train_dataset=Dataset.from_list(data.encoded),
        data_collator=collator,
        processing_class=data.tokenizer,
        callbacks=callbacks,
        loss_averaging=config.loss_averaging,
        keep_logits=accepts_logits_to_keep(net),
        even_micro_batches=packing.enabled and packing_mod.sharded_backend() == "fsdp",
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)
    return trainer


def throughput(seen: dict[str, int], seconds: float) -> dict[str, Any]:
    """Rates over the optimizer steps this call ran (all processes): what packing changes."""

    def rate(count: int) -> float | None:
        return round(count / seconds, 2) if seconds > 0 else None

    positions = seen["positions"]
    return {
        "examples": seen["examples"],
        "tokens": seen["input_tokens"],
        "supervised_tokens": seen["supervised_tokens"],
        "positions": positions,  # tokens computed, padding included
        "forward_passes": seen["passes"],
        "examples_per_s": rate(seen["examples"]),
        "tokens_per_s": rate(seen["input_tokens"]),
        "supervised_tokens_per_s": rate(seen["supervised_tokens"]),
        "padding_share": round(1 - seen["input_tokens"] / positions, 4) if positions else 0.0,
    }


def summarize(
    config: TrainConfig,
    data: TrainingData,
    trainer: Any,
    result: Any,
    seconds: float,
    checkpoint: Path | None,
    precision: Precision,
    packing: PackingChoice,
) -> dict[str, Any]:
    """``train_summary.json``'s content (and what ``run_training`` returns)."""
    history = list(trainer.state.log_history)
    summary: dict[str, Any] = {
        "dataset": data.source.describe(),
        "model": {
            "spec": data.spec,
            "path": data.model.path,
            "revision": data.model.revision,
            "name": data.model.display_name,
        },
        **data.stats.as_dict(),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_time_s": round(seconds, 2),
        "final_loss": _final_loss(history),
        "mean_loss": float(result.training_loss),
        "precision": precision.name,
        "precision_reason": precision.reason,
        "cpu_flags": list(precision.cpu_flags),
        "loss_averaging": config.loss_averaging,
        "packing": packing.describe(),
        "throughput": throughput(trainer.seen, seconds),
        "resumed_from": checkpoint.name if checkpoint else None,
        "gradient_accumulation_steps": None
        if packing.enabled
        else config.gradient_accumulation_steps(),
        "world_size": config.world_size(),
        "end_of_turn": {
            "supervised": data.tokenizer.decode(list(data.eot.supervised)),
            "supervised_ids": list(data.eot.supervised),
            "masked_after": data.tokenizer.decode(list(data.eot.tail)),
            "masked_after_ids": list(data.eot.tail),
        },
        "loss_history": [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e],
    }
    summary["teacher_prefixes"] = teacher.summary(config, data.source, summary["model"], data.stats)
    return summary


def save_outputs(
    config: TrainConfig, data: TrainingData, trainer: Any, summary: dict[str, Any], folder: Path
) -> bool:
    """Write the model folder, its card and summary (rank 0; False on the other ranks)."""
    from upft import output

    state = None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # The weights are sharded over the processes: every rank takes part in gathering them
        # (FSDP: full state dict; ZeRO-3: 16-bit weights, see upft/launch), rank 0 writes.
        state = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.is_world_process_zero():
        return False
    save_model(trainer, data.tokenizer, folder, config, data.eot, base_dtype(data.model), state)
    shutil.rmtree(folder / TRAINER_DIR, ignore_errors=True)
    write_config(config, folder)
    output.write_summary(summary, folder)
    if config.teacher_prefixes:
        teacher.write_counts(data.stats, folder)
    output.write_card(config, summary, folder)
    logger.info("model written to %s (final loss %s)", folder, summary["final_loss"])
    return True


def after_save(
    config: TrainConfig, summary: dict[str, Any], folder: Path, quiet: bool
) -> dict[str, Any]:
    """Evaluate the saved model and push the folder, as configured (training memory freed)."""
    from upft import output

    if config.eval:
        from upft.evaluation.runner import evaluate_trained, release_memory

        release_memory()  # the eval engine needs the memory the training copy held
        summary["eval"] = evaluate_trained(config.eval, folder, quiet=quiet)
    if config.push_to_hub:
        # The uploaded folder is the one just written; the push result is only returned.
        summary["pushed"] = output.push_folder(folder, config.push_to_hub, config.private)
    return summary


def run_training(
    config: TrainConfig,
    quiet: bool = False,
    resume: bool = False,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train as ``config`` says and fill ``config.output``; returns the training summary.

    ``resume`` continues an interrupted run from the newest checkpoint in the output folder.
    ``callbacks`` are extra transformers ``TrainerCallback``s (benchmarks, tests).
    """
    import torch

    if quiet:
        quiet_library_bars()
    folder = Path(str(config.output)).expanduser()
    checkpoint = start_run(config, folder, resume)
    precision = precision_mod.detect(config.bf16)
    config = config.model_copy(update={"bf16": precision.bf16})  # written out resolved
    logger.info("computing in %s: %s", precision.name, precision.reason)
    if checkpoint is not None:
        config = check_resume(config, folder)
        logger.info("resuming from %s", checkpoint)
    data = load_training_data(config)
    net = load_model(data.model, config)
    packing = packing_mod.decide(
        config.packing,
        config.micro_batch_tokens,
        config.max_length,
        base_model(net),
        torch.cuda.is_available(),
    )
    config = config.model_copy(update={"packing": packing.enabled})
    trainer = build_trainer(config, data, net, packing, folder, quiet, callbacks)
    if checkpoint is None and _main_process():
        # Once data and model have loaded (a run that fails before leaves the folder empty),
        # and before the first step, so that an interrupted run can be resumed.
        write_config(config, folder)
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.monotonic() - started
    summary = summarize(config, data, trainer, result, seconds, checkpoint, precision, packing)
    written = save_outputs(config, data, trainer, summary, folder)
    del trainer, net  # an eval after training needs the memory they hold
    return after_save(config, summary, folder, quiet) if written else summary
