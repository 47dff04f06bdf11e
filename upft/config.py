"""Training configuration for ``upft-train``: paper defaults, a YAML file, command-line flags.

This is the first stage of the trainer. :class:`TrainConfig` is a strict pydantic model on the
base every upft config shares (``builder.yamlfile.Strict``) and holds every setting with the
defaults of the UPFT paper (AdamW, constant learning rate after a 3% warm-up, lr 1e-6, an
effective batch of 64 examples, one epoch, bf16 where the device supports it, sequences up to
4096 tokens, each example counting once in the loss), plus how often to save checkpoints and
whether to pack examples into micro-batches (by default wherever the model supports it).
Types and ranges are declared on the fields; pydantic converts flag text and
YAML scalars. :func:`resolve_config` layers a YAML file and then the flags on top of the
defaults (defaults < file < flags) and turns a validation failure into one :class:`TrainError`
line per problem that names the setting, where it came from (the flag, or ``file:line``) and
the fix. The resolved config is written into the output folder as ``train_config.yaml`` when a
run starts, which ``--config`` accepts again to repeat the run (or, with ``--resume``, to
continue it).

Each field has a flag of the same name with dashes (``learning_rate`` -> ``--learning-rate``);
a field's ``fix`` (``json_schema_extra``) is appended to its range errors.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from builder.errors import TrainError
from builder.hubclient import is_repo_id
from builder.yamlfile import Strict, node_line, read_mapping
from upft.packing import ATTENTION

# Flag text that means "no value" (e.g. ``--max-steps none``), for settings that may be empty.
_EMPTY = ("none", "null", "")


def _fix(text: str) -> dict[str, Any]:
    """A field's ``json_schema_extra``: what to write instead, appended to its range errors."""
    return {"fix": text}


class TrainConfig(Strict):
    """Every setting of one training run; field descriptions are the ``--help`` texts."""

    # YAML reads `revision: 1.0` as a number; settings that are names take it as text.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    dataset: str = Field(description="UPFT dataset: a Hub repo id or a local version folder")
    revision: str | None = Field(None, description="Hub dataset revision (tag, branch or commit)")
    dataset_config: str = Field("mixture", description="dataset config to train on")
    model: str | None = Field(
        None,
        description="model to fine-tune: local folder, Hub id or embedded:smollm2 "
        "(default: the model the dataset was sampled with, from its manifest)",
    )
    model_revision: str | None = Field(None, description="Hub revision of the model")
    teacher_prefixes: bool = Field(
        False,
        description="train --model on a dataset another model (the teacher) sampled: each "
        "prefix text is kept whole and re-tokenised with the student's tokenizer (not the "
        "paper's self-generated setting)",
    )
    output: str = Field(description="folder for the trained model")
    learning_rate: float = Field(1e-6, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: Literal["constant_with_warmup", "constant", "linear", "cosine"] = Field(
        "constant_with_warmup",
        description="learning-rate schedule: constant_with_warmup (the paper's), constant, "
        "linear, cosine",
    )
    warmup_ratio: float = Field(
        0.03,
        ge=0,
        lt=1,
        description="share of the steps spent warming up, in [0, 1)",
        json_schema_extra=_fix("e.g. 0.03 for a 3% warm-up"),
    )
    optimizer: str = Field(
        "adamw_torch", description="transformers optimizer name (AdamW variants)"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    batch_size: int = Field(
        64, ge=1, description="effective batch: micro-batch x accumulation x number of processes"
    )
    micro_batch_size: int = Field(
        1, ge=1, description="examples per device per forward pass (unpacked runs only)"
    )
    packing: bool | None = Field(
        None,
        description="concatenate examples without padding into micro-batches of up to "
        "micro_batch_tokens tokens, boundaries kept by attention; the loss is unchanged "
        "(default: on where the model's attention supports it)",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=16,
        description="tokens per packed micro-batch; a longer example gets one of its own "
        "(default: max_length on GPU, 512 on CPU)",
        json_schema_extra=_fix("a chat example needs more"),
    )
    attn_implementation: str | None = Field(
        None,
        description="attention implementation: " + ", ".join(ATTENTION) + " (default: the "
        "model's own, sdpa for most; flash_attention_2 needs the flash-attn package)",
    )
    epochs: float = Field(1.0, gt=0, description="passes over the dataset")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="stop after this many optimizer steps (smoke runs)",
        json_schema_extra=_fix("leave it out to train full epochs"),
    )
    max_length: int = Field(
        4096,
        ge=16,
        description="longest example in tokens; longer ones are left out, not cut",
        json_schema_extra=_fix("a shorter one cannot hold a chat prompt (the paper uses 4096)"),
    )
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision, float32 master weights (default: on with a CUDA "
        "device that has bf16 or a CPU with AMX)",
    )
    gradient_checkpointing: bool = Field(
        False, description="trade compute for memory on long sequences"
    )
    seed: int = Field(42, description="seed for shuffling, dropout and init")
    logging_steps: int = Field(1, ge=1, description="log the loss every N steps")
    loss_averaging: Literal["example", "token"] = Field(
        "example",
        description="example: each example counts once (mean over its supervised tokens, then "
        "over the examples of the effective batch; the paper's setup); token: mean over all "
        "supervised tokens of the effective batch",
    )
    save_steps: int = Field(
        50,
        ge=0,
        description="save a checkpoint every N optimizer steps (0: none); see --resume",
        json_schema_extra=_fix("0 saves no checkpoints"),
    )
    save_total_limit: int = Field(
        1,
        ge=1,
        description="checkpoints kept; older ones are deleted",
        json_schema_extra=_fix("--resume needs the newest checkpoint"),
    )
    lora: bool = Field(False, description="train a LoRA adapter (merged on save)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="modules LoRA adapts, comma-separated (default all-linear)",
        json_schema_extra=_fix("e.g. q_proj,v_proj or all-linear"),
    )
    eos_token: str | None = Field(
        None, description="end-of-turn token (default: the tokenizer's and generation config's)"
    )
    push_to_hub: str | None = Field(
        None, description="upload the trained model to this Hub repo (org/name)"
    )
    private: bool = Field(False, description="create the Hub repo as private")
    overwrite: bool = Field(False, description="write into an output folder that is not empty")
    eval: str | None = Field(
        None, description="upft-eval YAML run on the saved model; results go into its card"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        """What pydantic's conversions leave open: empty text, booleans as numbers, lists."""
        name = str(info.field_name)
        kind, nullable = field_type(name)
        if value is None or isinstance(value, str) and value.strip().lower() in _EMPTY:
            if nullable:
                return None
            raise PydanticCustomError("empty", "must not be empty; give a value or remove it")
        if kind in (int, float) and isinstance(value, bool):  # pydantic would read True as 1
            raise PydanticCustomError("bool_as_number", "is not a number")
        if kind is list:
            items = value.split(",") if isinstance(value, str) else value
            if isinstance(items, list) and all(isinstance(i, str) for i in items):
                return [i.strip() for i in items if i.strip()]
        return value

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not is_repo_id(value):
            raise ValueError("is not a Hub repo id; write it as org/name")
        return value

    @field_validator("attn_implementation")
    @classmethod
    def _attention(cls, value: str | None) -> str | None:
        if value is not None and value not in ATTENTION:
            raise ValueError(f"is not one of {', '.join(ATTENTION)}")
        return value

    @field_validator("eval")
    @classmethod
    def _eval_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError("is not a file; pass an upft-eval YAML config (see upft-eval --help)")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        per_step = self.micro_batch_size * self.world_size()
        if self.batch_size % per_step:
            raise _combination(
                "batch_size",
                self.batch_size,
                f"is not a multiple of micro_batch_size x processes = {self.micro_batch_size} x "
                f"{self.world_size()}; choose a batch size divisible by {per_step}",
            )
        if self.revision is not None and Path(self.dataset).expanduser().exists():
            raise _combination(
                "revision",
                self.revision,
                f"only applies to Hub datasets, but {self.dataset!r} is a local folder",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def world_size(self) -> int:
        """Processes taking part (torchrun/accelerate set WORLD_SIZE); 1 for a plain run."""
        return int(os.environ.get("WORLD_SIZE", "1") or 1)

    def gradient_accumulation_steps(self) -> int:
        per_step = self.micro_batch_size * self.world_size()
        return self.batch_size // per_step


def _combination(key: str, value: Any, problem: str) -> PydanticCustomError:
    """A check over several settings, reported against ``key`` (where it was set)."""
    return PydanticCustomError(
        "combination", "{problem}", {"key": key, "value": value, "problem": problem}
    )


FIELDS: dict[str, FieldInfo] = dict(TrainConfig.model_fields)


def flag_name(key: str) -> str:
    """The command-line flag of a config key."""
    return "--" + key.replace("_", "-")


def field_type(key: str) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a field; ``Literal`` choices are ``str``."""
    hint: Any = TrainConfig.model_fields[key].annotation
    nullable = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, nullable = inner[0], True
    if typing.get_origin(hint) is Literal:
        return str, nullable
    if typing.get_origin(hint) is list:
        return list, nullable
    return hint, nullable


def default_value(key: str) -> Any:
    """A field's default (``None`` for the required ``dataset`` and ``output``)."""
    info = FIELDS[key]
    if info.is_required():
        return None
    return info.get_default(call_default_factory=True)


def _bounds(info: FieldInfo) -> str:
    """The allowed range of a numeric field, in words, from its declared constraints."""
    low = next((m for m in info.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m for m in info.metadata if isinstance(m, Le | Lt)), None)
    if low is not None and high is not None:
        left = f"[{low.ge}" if isinstance(low, Ge) else f"({low.gt}"
        right = f"{high.le}]" if isinstance(high, Le) else f"{high.lt})"
        return f"must be in {left}, {right}"
    if isinstance(low, Ge):
        return "must not be negative" if low.ge == 0 else f"must be at least {low.ge}"
    if isinstance(low, Gt):
        return f"must be greater than {low.gt}"
    if isinstance(high, Le):
        return f"must be at most {high.le}"
    if isinstance(high, Lt):
        return f"must be less than {high.lt}"
    return "is out of range"


def _example(key: str, where: str, fallback: Any) -> str:
    value = default_value(key)
    value = fallback if value is None else value
    return f"{flag_name(key)} {value}" if where.startswith("--") else f"{key}: {value}"


def _problem(err: Any, key: str, where: str) -> str:
    """What is wrong with one value, and how to write it, from a pydantic error."""
    kind = err["type"]
    info = FIELDS[key]
    if kind.startswith("int_"):
        return f"is not a whole number; write e.g. {_example(key, where, 8)}"
    if kind.startswith("float_") or kind == "bool_as_number":
        return f"is not a number; write e.g. {_example(key, where, 1e-6)}"
    if kind.startswith("bool_"):
        return "is not true/false; write true or false"
    if kind == "literal_error":
        return f"is not one of {', '.join(map(str, typing.get_args(info.annotation)))}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = _bounds(info)
    elif kind == "too_short":
        problem = "names nothing"
    elif kind == "string_type":
        problem = "must be text"
    elif kind == "list_type":
        problem = "must be a list of names or a comma-separated string"
    else:
        return str(err["msg"]).removeprefix("Value error, ")
    extra = info.json_schema_extra
    fix = extra.get("fix") if isinstance(extra, dict) else None
    return f"{problem}; {fix}" if fix else problem


def _explain(err: Any, sources: dict[str, str], values: dict[str, Any]) -> str:
    """One validation error as one line: setting = value (from where) problem; fix."""
    ctx = err.get("ctx") or {}
    key = str(err["loc"][0]) if err["loc"] else str(ctx.get("key"))
    where = sources.get(key, "default")
    if err["type"] == "missing":
        return f"no {key} given; pass {flag_name(key)} or set '{key}:' in the --config file"
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(FIELDS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "upft-train --help lists the settings"
        return f"unknown setting {key!r} (from {where}); {hint}"
    value = ctx["value"] if "value" in ctx else values.get(key)
    return f"{key} = {value!r} (from {where}) {_problem(err, key, where)}"


def resolve_config(
    config_file: str | Path | None = None, flags: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < ``config_file`` < ``flags`` (None values in ``flags`` mean 'not given')."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        data, root = read_mapping(config_file, TrainError, "training config")
        for key, raw in data.items():
            line = node_line(root, (key,))
            values[str(key)] = raw
            sources[str(key)] = f"{config_file}:{line}" if line else str(config_file)
    for key, raw in (flags or {}).items():
        if key not in FIELDS:
            raise TrainError(f"unknown setting {key!r}")  # a programming error in the CLI layer
        if raw is None:
            continue
        values[key] = raw
        sources[key] = flag_name(key)
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        problems = [_explain(err, sources, values) for err in exc.errors()]
    if len(problems) == 1:
        raise TrainError(problems[0])
    raise TrainError(
        f"{len(problems)} problems with the training settings:\n  - " + "\n  - ".join(problems)
    )


def write_config(config: TrainConfig, folder: str | Path) -> Path:
    """Write the resolved config as ``train_config.yaml`` (usable again with ``--config``)."""
    path = Path(folder) / "train_config.yaml"
    path.write_text(
        "# Resolved upft-train settings; repeat the run with: upft-train --config "
        "train_config.yaml\n" + config.to_yaml(),
        encoding="utf-8",
    )
    return path
