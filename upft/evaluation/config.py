"""Evaluation settings: a strict schema, an optional YAML file, and command-line flags on top.

First stage of ``upft-eval``. :class:`EvalConfig` is a pydantic model that rejects unknown
keys; :func:`load_config` reads a YAML file (errors name the field path and its line, as for
recipes) and :func:`apply_flags` layers flags on top, so the precedence is defaults < file <
flags. The defaults are the paper's evaluation: zero-shot, greedy (temperature 0), the model's
chat template, the plain question as the prompt, one sample per question. The resolved config
is written into the output folder as ``eval_config.yaml``. The ``executor`` section is the
builder's (``builder.recipe.ExecutorConfig``): ``kind: ray`` spreads the eval's shards over
engine replicas on a Ray cluster, with the same rows as a local eval.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from builder.errors import EvalError
from builder.gold import compile_pattern
from builder.hubclient import is_repo_id
from builder.recipe import DEFAULT_INSTRUCTION, ExecutorConfig
from builder.sampling.base import EngineOptions, SamplingSettings
from builder.served import ServedFields
from builder.yamlfile import Strict as _Strict
from builder.yamlfile import format_errors, read_mapping
from upft.evaluation import benchmarks

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class ModelSection(ServedFields, _Strict):
    """The model under evaluation and how its engine is set up (``backend: openai``: the server
    that serves it, as in a recipe: ``builder.served.ServedFields``)."""

    id: str = Field(default="embedded:smollm2", description="folder, Hub id or embedded:smollm2")
    revision: str | None = None
    backend: Literal["vllm", "transformers", "openai"] = "vllm"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int | None = Field(default=None, ge=64)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    cpu_kvcache_gib: int = Field(default=2, ge=1)
    kv_block_size: int | None = Field(default=None, ge=16, multiple_of=16)
    compile: Literal["auto", "compiled", "eager"] = Field(
        default="auto", description="vLLM: auto compiles on GPUs, and on CPUs for long evals"
    )
    system_prompt: str | None = Field(
        default=None, description="e.g. Qwen-Math's 'put your final answer within \\boxed{}'"
    )
    chat_template: str | None = None

    def engine_options(self, token_bound: int | None = None) -> EngineOptions:
        return EngineOptions(
            compile=self.compile,
            token_bound=token_bound,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            cpu_kvcache_gib=self.cpu_kvcache_gib,
            kv_block_size=self.kv_block_size,
        )


class DataSection(_Strict):
    """Questions and gold answers: a named benchmark, a local file or a Hub dataset."""

    benchmark: str | None = None
    path: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    question: str | None = Field(default=None, description="field or template; default question")
    answer: str | None = Field(default=None, description="gold-answer field")
    answer_pattern: str | None = Field(
        default=None,
        description="regular expression with one group: the gold answer inside the answer field",
    )
    id: str | None = None
    limit: int | None = Field(default=None, ge=1)
    shuffle: bool = False
    seed: int = 0
    prefer: Literal["auto", "local", "hub"] = Field(
        default="auto", description="benchmark copy: the shared data file (auto: when present)"
    )

    @field_validator("answer_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        compile_pattern(value)
        return value

    @field_validator("benchmark")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in benchmarks.BENCHMARKS:
            raise ValueError(f"unknown benchmark {value!r}; known benchmarks: {benchmarks.known()}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        given = [k for k in ("benchmark", "path", "hub") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of 'benchmark' (" + benchmarks.known() + "), 'path' (a local "
                "file) or 'hub' (a Hub dataset id)"
            )
        if self.path is not None and Path(self.path).suffix.lower() not in FILE_SUFFIXES:
            raise ValueError(f"path {self.path!r} must end in one of {', '.join(FILE_SUFFIXES)}")
        if self.hub is not None and not is_repo_id(self.hub):
            raise ValueError(f"hub {self.hub!r} is not a dataset id like org/name")
        if self.benchmark is None and self.answer is None:
            raise ValueError(
                "name the gold-answer field with 'answer' (flag --answer), e.g. answer: answer"
            )
        return self


class GenerationSection(_Strict):
    """Decoding: greedy by default; ``n`` > 1 samples per question give pass@k."""

    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1, description="0 or -1: disabled")
    repetition_penalty: float = Field(default=1.0, gt=0)
    seed: int = 0
    max_tokens: int = Field(default=1024, ge=1)
    n: int = Field(default=1, ge=1, le=256, description="samples per question")
    pass_k: list[int] = Field(default_factory=list, description="k values (default: 1 and n)")

    @model_validator(mode="after")
    def _check(self) -> GenerationSection:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                f"n = {self.n} samples with temperature 0 would be {self.n} identical greedy "
                "answers; set a temperature (e.g. 0.6) or n = 1"
            )
        bad = [k for k in self.pass_k if k < 1 or k > self.n]
        if bad:
            raise ValueError(f"pass_k values {bad} must lie between 1 and n = {self.n}")
        return self

    def ks(self) -> list[int]:
        return sorted(set(self.pass_k or [1, self.n]))

    def settings(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
        )

    def greedy(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
        )


class PrefixCheckSection(_Strict):
    """The prefix behaviour: with the prefix instruction, does the model stop after ~L tokens?"""

    enabled: bool = True
    length: int = Field(default=32, ge=1, le=4096, description="L, the trained prefix length")
    slack: int = Field(default=8, ge=0, description="tokens past L that still count as stopping")
    instruction: str = DEFAULT_INSTRUCTION


class ExecutorSection(ExecutorConfig):
    """Who generates the shards: this process or engine replicas on Ray (the builder's section).

    Not part of the fingerprint: an eval started on Ray resumes locally and vice versa.
    """

    SHARD_SIZE_HOME = (
        "is a top-level key of an eval config (shard_size: 128, flag --shard-size): shards "
        "are the unit every executor persists and resumes"
    )


class EvalConfig(_Strict):
    """One evaluation: model x data x decoding, written to ``output``."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    generation: GenerationSection = Field(default_factory=GenerationSection)
    prefix_check: PrefixCheckSection = Field(default_factory=PrefixCheckSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    scoring_timeout_s: float = Field(default=5.0, gt=0, description="per math-verify check")
    output: str | None = None
    shard_size: int = Field(default=128, ge=1, description="questions per persisted shard")
    card: str | None = Field(default=None, description="model folder whose README.md gets results")
    base: str | None = Field(default=None, description="finished eval of the base model (card)")

    @model_validator(mode="after")
    def _served_locally(self) -> EvalConfig:
        if self.model.backend == "openai" and self.executor.kind != "local":
            raise ValueError(
                "a served model (model.backend: openai) answers through its server, which "
                "batches the requests itself; remove executor.kind: ray"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def data_from_text(value: str) -> dict[str, Any]:
    """``--data``: a benchmark name, a local file, or a Hub dataset id."""
    lowered = value.lower()
    if lowered in benchmarks.BENCHMARKS:
        return {"benchmark": lowered}
    if Path(value).suffix.lower() in FILE_SUFFIXES or Path(value).expanduser().is_file():
        return {"path": value}
    if is_repo_id(value) and not Path(value).exists():
        return {"hub": value}
    benchmarks.get(value)  # raises: unknown benchmark, listing the known ones
    raise AssertionError("unreachable")


def parse_config(data: Any, where: str, root: yaml.Node | None = None) -> EvalConfig:
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise EvalError(f"{where}: an eval config must be a YAML mapping, got {kind}")
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        raise EvalError(format_errors(exc, where, root, EvalConfig, "eval config")) from None


def read_file(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The raw mapping of an eval YAML file (relative paths resolved against its folder)."""
    path = Path(path)
    data, root = read_mapping(path, EvalError, "eval config")
    base = path.parent.resolve()
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("path"), str):
        if not Path(section["path"]).expanduser().is_absolute():
            section["path"] = str(base / section["path"])
    for key in ("output", "card", "base"):
        value = data.get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            data[key] = str(base / value)
    return data, root


# flag name -> (section, key); section None means a top-level key
FLAG_KEYS: dict[str, tuple[str | None, str]] = {
    "model": ("model", "id"),
    "revision": ("model", "revision"),
    "backend": ("model", "backend"),
    "base_url": ("model", "base_url"),
    "served_name": ("model", "served_name"),
    "api_key_env": ("model", "api_key_env"),
    "tokenizer": ("model", "tokenizer"),
    "endpoint": ("model", "endpoint"),
    "max_concurrency": ("model", "max_concurrency"),
    "dtype": ("model", "dtype"),
    "max_model_len": ("model", "max_model_len"),
    "cpu_kvcache_gib": ("model", "cpu_kvcache_gib"),
    "tensor_parallel_size": ("model", "tensor_parallel_size"),
    "compile": ("model", "compile"),
    "system_prompt": ("model", "system_prompt"),
    "question": ("data", "question"),
    "answer": ("data", "answer"),
    "answer_pattern": ("data", "answer_pattern"),
    "id_field": ("data", "id"),
    "split": ("data", "split"),
    "limit": ("data", "limit"),
    "max_tokens": ("generation", "max_tokens"),
    "temperature": ("generation", "temperature"),
    "top_p": ("generation", "top_p"),
    "seed": ("generation", "seed"),
    "samples": ("generation", "n"),
    "prefix_length": ("prefix_check", "length"),
    "output": (None, "output"),
    "shard_size": (None, "shard_size"),
    "card": (None, "card"),
    "base": (None, "base"),
}


def resolve_config(config_file: str | None, flags: dict[str, Any]) -> EvalConfig:
    """Defaults < ``config_file`` < ``flags`` (a None flag means 'not given')."""
    data: dict[str, Any]
    root = None
    where = "command-line flags"
    if config_file is not None:
        data, root = read_file(config_file)
        where = config_file
        if "data" in data:  # the file's own mistakes are reported with their lines
            parse_config(copy.deepcopy(data), where, root)
    else:
        data = {}
    if flags.get("data") is not None:
        section = dict(data.get("data") or {})
        for key in ("benchmark", "path", "hub"):
            section.pop(key, None)
        section.update(data_from_text(str(flags["data"])))
        data["data"] = section
    for flag, (section_name, key) in FLAG_KEYS.items():
        value = flags.get(flag)
        if value is None:
            continue
        if section_name is None:
            data[key] = value
        else:
            data[section_name] = {**(data.get(section_name) or {}), key: value}
    if flags.get("pass_k"):
        data["generation"] = {**(data.get("generation") or {}), "pass_k": list(flags["pass_k"])}
    if flags.get("no_prefix_check"):
        data["prefix_check"] = {**(data.get("prefix_check") or {}), "enabled": False}
    if "data" not in data:
        raise EvalError("no questions given; pass --data (a benchmark, a file or a Hub dataset)")
    card = data.get("card")
    if card and flags.get("model") is None and "id" not in (data.get("model") or {}):
        # `upft-eval --card MODEL_DIR` evaluates that model unless told otherwise
        data["model"] = {**(data.get("model") or {}), "id": str(card)}
    if config_file is not None and any(v is not None for v in flags.values()):
        where = f"{config_file} + command-line flags"
    cfg = parse_config(data, where, root if where == config_file else None)
    if cfg.output is None and cfg.card is not None:
        cfg.output = str(Path(cfg.card) / "eval" / data_name(cfg.data))
    return cfg


def data_name(d: DataSection) -> str:
    """A short folder name for the data (the default eval folder inside a model's folder)."""
    if d.benchmark is not None:
        return d.benchmark.lower()
    if d.path is not None:
        return Path(d.path).stem
    return str(d.hub).replace("/", "--")
