"""Training configuration for ``upft-train``: paper defaults, a YAML file, command-line flags.

This is the first stage of the trainer. :class:`TrainConfig` holds every setting with the
defaults of the UPFT paper (AdamW, constant learning rate after a 3% warm-up, lr 1e-6, an
effective batch of 64 reached by gradient accumulation, one epoch, bf16 where the GPU supports
it, sequences up to 4096 tokens, each example counting once in the loss), plus how often to
save checkpoints. :func:`resolve_config` layers a YAML file and then the flags on top of the
defaults (defaults < file < flags), checks every value and says where a bad one came from. The
resolved config is written into the output folder as ``train_config.yaml`` when a run starts,
which ``--config`` accepts again to repeat the run (or, with ``--resume``, to continue it).

Each field has a flag of the same name with dashes (``learning_rate`` -> ``--learning-rate``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import TrainError
from builder.hubclient import is_repo_id
from builder.yamlfile import read_mapping

# transformers scheduler names that make sense for UPFT runs; the paper uses the first.
LR_SCHEDULERS = ("constant_with_warmup", "constant", "linear", "cosine")
# How the loss averages over the effective batch; the first is the paper's (each example once).
LOSS_AVERAGING = ("example", "token")


@dataclass
class TrainConfig:
    """Every setting of one training run; field docs are the ``--help`` texts."""

    dataset: str | None = field(
        default=None, metadata={"help": "UPFT dataset: a Hub repo id or a local version folder"}
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub dataset revision (tag, branch or commit)"}
    )
    dataset_config: str = field(default="mixture", metadata={"help": "dataset config to train on"})
    model: str | None = field(
        default=None,
        metadata={
            "help": "model to fine-tune: local folder, Hub id or embedded:smollm2 "
            "(default: the model the dataset was sampled with, from its manifest)"
        },
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the model"})
    output: str | None = field(default=None, metadata={"help": "folder for the trained model"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate (AdamW)"})
    lr_scheduler: str = field(
        default="constant_with_warmup",
        metadata={"help": "learning-rate schedule: " + ", ".join(LR_SCHEDULERS)},
    )
    warmup_ratio: float = field(
        default=0.03, metadata={"help": "share of the steps spent warming up, in [0, 1)"}
    )
    optimizer: str = field(
        default="adamw_torch", metadata={"help": "transformers optimizer name (AdamW variants)"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    batch_size: int = field(
        default=64,
        metadata={"help": "effective batch: micro-batch x accumulation x number of processes"},
    )
    micro_batch_size: int = field(
        default=1, metadata={"help": "examples per device per forward pass"}
    )
    epochs: float = field(default=1.0, metadata={"help": "passes over the dataset"})
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many optimizer steps (smoke runs)"}
    )
    max_length: int = field(
        default=4096,
        metadata={"help": "longest example in tokens; longer ones are left out, not cut"},
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision (default: on where CUDA has bf16)"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for memory on long sequences"}
    )
    seed: int = field(default=42, metadata={"help": "seed for shuffling, dropout and init"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})
    loss_averaging: str = field(
        default="example",
        metadata={
            "help": "example: each example counts once (mean over its supervised tokens, then "
            "over the examples of the effective batch; the paper's setup); token: mean over all "
            "supervised tokens of the effective batch"
        },
    )
    save_steps: int = field(
        default=50,
        metadata={"help": "save a checkpoint every N optimizer steps (0: none); see --resume"},
    )
    save_total_limit: int = field(
        default=1, metadata={"help": "checkpoints kept; older ones are deleted"}
    )
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (merged on save)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "modules LoRA adapts, comma-separated (default all-linear)"},
    )
    eos_token: str | None = field(
        default=None,
        metadata={"help": "end-of-turn token (default: the tokenizer's and generation config's)"},
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "upload the trained model to this Hub repo (org/name)"}
    )
    private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    overwrite: bool = field(
        default=False, metadata={"help": "write into an output folder that is not empty"}
    )
    eval: str | None = field(
        default=None,
        metadata={"help": "upft-eval YAML run on the saved model; results go into its card"},
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def world_size(self) -> int:
        """Processes taking part (torchrun/accelerate set WORLD_SIZE); 1 for a plain run."""
        return int(os.environ.get("WORLD_SIZE", "1") or 1)

    def gradient_accumulation_steps(self) -> int:
        per_step = self.micro_batch_size * self.world_size()
        return self.batch_size // per_step


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def flag_name(key: str) -> str:
    """The command-line flag of a config key."""
    return "--" + key.replace("_", "-")


def field_type(key: str) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a field."""
    hint = _HINTS[key]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    if typing.get_origin(hint) is list:
        return list, False
    return hint, False


def _convert(key: str, value: Any, where: str) -> Any:
    """Coerce one raw value (YAML scalar or flag string) to the field's type, or explain."""
    kind, nullable = field_type(key)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if nullable:
            return None
        raise TrainError(f"{key} (from {where}) must not be empty; give a value or remove it")
    bad = f"{key} = {value!r} (from {where})"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TrainError(f"{bad} is not true/false; write true or false")
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise TrainError(f"{bad} is not a whole number; write e.g. {flag_name(key)} 8")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TrainError(
                f"{bad} is not a whole number; write e.g. {flag_name(key)} 8"
            ) from None
    if kind is float:
        if isinstance(value, bool):
            raise TrainError(f"{bad} is not a number; write e.g. 1e-6")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TrainError(f"{bad} is not a number; write e.g. 1e-6") from None
    if kind is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise TrainError(f"{bad} must be a list of names or a comma-separated string")
        names = [i.strip() for i in items if i.strip()]
        if not names:
            raise TrainError(f"{bad} names no modules; e.g. q_proj,v_proj or all-linear")
        return names
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise TrainError(f"{bad} must be text")
    return str(value)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into raw key -> value pairs; unknown keys are an error."""
    path = Path(path)
    data, _ = read_mapping(path, TrainError, "training config")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TrainError(
            f"{path}: unknown setting(s) {', '.join(hints)}; known settings are: "
            + ", ".join(FIELDS)
        )
    return data


def resolve_config(
    config_file: str | Path | None = None, flags: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < ``config_file`` < ``flags`` (None values in ``flags`` mean 'not given')."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        for key, raw in load_config_file(config_file).items():
            values[key] = _convert(key, raw, f"config file {config_file}")
            sources[key] = f"config file {config_file}"
    for key, raw in (flags or {}).items():
        if key not in FIELDS:
            raise TrainError(f"unknown setting {key!r}")  # a programming error in the CLI layer
        if raw is None:
            continue
        values[key] = _convert(key, raw, flag_name(key))
        sources[key] = flag_name(key)
    config = TrainConfig(**values)
    validate(config, sources)
    return config


def validate(config: TrainConfig, sources: dict[str, str] | None = None) -> None:
    """Check ranges and combinations; messages name the setting and where it was set."""
    sources = sources or {}

    def fail(key: str, problem: str) -> typing.NoReturn:
        where = sources.get(key, "default")
        raise TrainError(f"{key} = {getattr(config, key)!r} (from {where}) {problem}")

    for key in ("dataset", "output"):
        if not getattr(config, key):
            raise TrainError(
                f"no {key} given; pass {flag_name(key)} or set '{key}:' in the --config file"
            )
    if config.eval is not None and not Path(config.eval).expanduser().is_file():
        fail("eval", "is not a file; pass an upft-eval YAML config (see upft-eval --help)")
    positive = ("learning_rate", "batch_size", "micro_batch_size", "epochs", "max_length")
    for key in positive + ("logging_steps", "lora_r", "lora_alpha", "max_grad_norm"):
        if getattr(config, key) <= 0:
            fail(key, "must be greater than 0")
    if config.max_steps is not None and config.max_steps <= 0:
        fail("max_steps", "must be at least 1 (or leave it out to train full epochs)")
    if not 0 <= config.warmup_ratio < 1:
        fail("warmup_ratio", "must be in [0, 1), e.g. 0.03 for a 3% warm-up")
    if not 0 <= config.lora_dropout < 1:
        fail("lora_dropout", "must be in [0, 1)")
    if config.weight_decay < 0:
        fail("weight_decay", "must not be negative")
    if config.lr_scheduler not in LR_SCHEDULERS:
        fail("lr_scheduler", f"is not one of {', '.join(LR_SCHEDULERS)}")
    if config.loss_averaging not in LOSS_AVERAGING:
        fail("loss_averaging", f"is not one of {', '.join(LOSS_AVERAGING)}")
    if config.save_steps < 0:
        fail("save_steps", "must not be negative (0 saves no checkpoints)")
    if config.save_total_limit < 1:
        fail("save_total_limit", "must be at least 1 (--resume needs the newest checkpoint)")
    if config.max_length < 16:
        fail("max_length", "is too short for a chat prompt; use at least 16 (paper: 4096)")
    per_step = config.micro_batch_size * config.world_size()
    if config.batch_size % per_step:
        fail(
            "batch_size",
            f"is not a multiple of micro_batch_size x processes = {config.micro_batch_size} x "
            f"{config.world_size()}; choose a batch size divisible by {per_step}",
        )
    if config.push_to_hub is not None and not is_repo_id(config.push_to_hub):
        fail("push_to_hub", "is not a Hub repo id; write it as org/name")
    if config.revision is not None and Path(str(config.dataset)).expanduser().exists():
        fail("revision", f"only applies to Hub datasets, but {config.dataset!r} is a local folder")


def write_config(config: TrainConfig, folder: str | Path) -> Path:
    """Write the resolved config as ``train_config.yaml`` (usable again with ``--config``)."""
    path = Path(folder) / "train_config.yaml"
    path.write_text(
        "# Resolved upft-train settings; repeat the run with: upft-train --config "
        "train_config.yaml\n" + config.to_yaml(),
        encoding="utf-8",
    )
    return path
