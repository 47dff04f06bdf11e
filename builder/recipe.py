"""The recipe: a strict, validated description of one dataset build.

``load_recipe`` reads a YAML file into :class:`Recipe` (pydantic, unknown keys rejected) and
turns validation failures into one :class:`RecipeError` that names each bad field path, its YAML
line and what is expected. ``apply_overrides`` layers CLI flags on top, so the one precedence
rule is defaults < recipe file < CLI flags; the result is resolved once and written into the
output directory as ``recipe.yaml``. This is the first stage of the pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from builder.errors import RecipeError
from builder.gold import compile_pattern
from builder.hubclient import is_repo_id
from builder.sampling.base import EngineOptions, SamplingSettings
from builder.served import ServedFields, drop_for_backend
from builder.yamlfile import Strict as _Strict
from builder.yamlfile import format_errors, read_mapping

DEFAULT_INSTRUCTION = (
    "Do not solve the whole problem. Write only the opening step of your solution: the first "
    "thing you would work out. It does not need to reach the final answer."
)

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# A field placeholder in a question template: "{Body} {Question}".
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SourceConfig(_Strict):
    """One question set: a Hub dataset (``hub``) or a local file (``path``).

    A recipe has one (``source:``) or several (``sources:``, taken in order). ``name`` labels
    the source's rows (the ``source`` column), its manifest entry and, with several sources, the
    ids its id field gives; left out, it is derived from the file name or the Hub id.
    """

    name: str | None = Field(
        default=None,
        description="labels this source's rows; default: the file's stem or the Hub id's name",
    )
    hub: str | None = Field(default=None, description="Hub dataset id, e.g. openai/gsm8k")
    path: str | None = Field(default=None, description="local .jsonl/.json/.parquet/.csv file")
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool | None = Field(
        default=None,
        description="Hub only: read through datasets' streaming path (nothing cached on disk); "
        "empty: stream when the dataset's files exceed 1 GiB",
    )
    question: str = Field(
        default="question", description="a field name, or a template like '{Body} {Question}'"
    )
    answer: str | None = None
    answer_pattern: str | None = Field(
        default=None,
        description="regular expression with one group: the gold answer inside the answer field",
    )
    id: str | None = None
    limit: int | None = Field(default=None, ge=1)
    shuffle: bool = False
    seed: int = 0

    @field_validator("answer_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        compile_pattern(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        # Filled in here so that the resolved recipe (and the fingerprint) names every source.
        if isinstance(data, dict) and data.get("name") is None:
            path, hub = data.get("path"), data.get("hub")
            if isinstance(path, str):
                data = {**data, "name": default_source_name(Path(path).stem)}
            elif isinstance(hub, str):
                data = {**data, "name": default_source_name(hub.rsplit("/", 1)[-1])}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.hub is None) == (self.path is None):
            raise ValueError("set exactly one of 'hub' (a Hub dataset id) or 'path' (a local file)")
        if self.path is not None:
            suffix = Path(self.path).suffix.lower()
            if suffix not in {".jsonl", ".json", ".parquet", ".csv"}:
                raise ValueError(
                    f"path {self.path!r} has suffix {suffix!r}; use .jsonl, .json, .parquet or .csv"
                )
            for name in ("config", "revision", "streaming"):
                if getattr(self, name) is not None:
                    raise ValueError(f"'{name}' only applies to a Hub source; remove it")
        if not self.question.strip():
            raise ValueError("'question' must name a field or be a template like '{problem}'")
        if self.answer_pattern is not None and self.answer is None:
            raise ValueError("'answer_pattern' applies to the answer field: set 'answer' too")
        if self.name is not None and not _SOURCE_NAME.match(self.name):
            raise ValueError(
                f"name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-' (it labels "
                "the source's rows and prefixes its ids)"
            )
        return self

    def question_fields(self) -> list[str]:
        """Field names the question needs: the template's placeholders, or the bare name."""
        found = PLACEHOLDER.findall(self.question)
        return found if found else [self.question]

    @property
    def label(self) -> str:
        """The source's name (always set once validated)."""
        return self.name or "source"


def default_source_name(stem: str) -> str:
    """A valid source name from a file's stem (``gsm8k-test``) or a Hub id's last part."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return name or "source"


class ModelConfig(ServedFields, _Strict):
    """The model that samples, and how its engine is set up (``backend: openai``: the server
    that serves it, see ``builder.served.ServedFields``)."""

    id: str = "embedded:smollm2"
    revision: str | None = None
    system_prompt: str | None = None
    chat_template: str | None = None
    backend: Literal["vllm", "transformers", "openai"] = "vllm"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int | None = Field(default=None, ge=64)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # vLLM reads VLLM_CPU_KVCACHE_SPACE with int(): "2.0" would stop the engine.
    cpu_kvcache_gib: int = Field(
        default=2, ge=1, description="vLLM KV cache on CPU machines (whole GiB)"
    )
    kv_block_size: int | None = Field(
        default=None,
        ge=16,
        multiple_of=16,
        description="vLLM KV block size in tokens; empty: 32 on CPU, vLLM's default on GPU",
    )
    compile: Literal["auto", "compiled", "eager"] = Field(
        default="auto",
        description="vLLM: compiled (torch.compile; CUDA graphs on GPUs) or eager; auto: "
        "compiled on GPUs, on CPUs only when the planned token budget pays for compiling",
    )

    def engine_options(self, token_bound: int | None = None) -> EngineOptions:
        """What a sampler needs to construct its engine (``token_bound``: the planned budget)."""
        return EngineOptions(
            self.dtype,
            self.max_model_len,
            self.tensor_parallel_size,
            self.gpu_memory_utilization,
            self.cpu_kvcache_gib,
            self.kv_block_size,
            self.compile,
            token_bound,
        )


class SamplingConfig(_Strict):
    """Decoding settings; top_p/top_k/repetition_penalty left empty take the model's
    generation config (the paper's rule), else the engines' neutral value (disabled)."""

    temperature: float = Field(default=0.6, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int = 0
    max_tokens: int = Field(default=1024, ge=1, description="token budget of a full trace")

    def settings(self) -> SamplingSettings:
        """The engines' decoding settings; the recipe must be resolved (nothing left empty)."""
        if self.top_p is None or self.top_k is None or self.repetition_penalty is None:
            raise RecipeError("internal: sampling settings used before the recipe was resolved")
        return SamplingSettings(
            self.temperature, self.top_p, self.top_k, self.seed, self.repetition_penalty
        )


class PrefixConfig(_Strict):
    """How prefixes are sampled and chosen. The defaults are the paper's: one sample per
    question, sampled with the plain question, its first L tokens kept (``vote: first``)."""

    length: int = Field(default=32, ge=1, le=4096)
    vote: Literal["first", "majority"] = "first"
    samples: int = Field(default=1, ge=1, le=256)
    min_agreement: float = Field(default=0.0, ge=0, le=1)
    instruction: str = DEFAULT_INSTRUCTION
    sample_prompt: Literal["plain", "instruction"] = Field(
        default="plain",
        description="prompt the prefix samples are drawn with: the plain question (the paper: "
        "the first L tokens of the model's normal answer) or the question plus the instruction",
    )

    @model_validator(mode="after")
    def _check(self) -> PrefixConfig:
        if self.vote == "majority" and self.samples < 2:
            raise ValueError("vote 'majority' needs samples >= 2 (use vote 'first' for one sample)")
        if self.vote == "first" and self.min_agreement > 0:
            raise ValueError("min_agreement only applies to vote 'majority'; remove it or set 0")
        if not self.instruction.strip():
            raise ValueError("instruction must not be empty")
        return self


class MixtureConfig(_Strict):
    """Which questions get a full trace instead of a prefix, and what counts as one."""

    full_trace_ratio: float = Field(default=0.1, ge=0, le=1)
    seed: int = 0
    full_trace_from: Literal["fresh", "prefix"] = "fresh"
    full_trace_tries: int = Field(
        default=3,
        ge=1,
        le=16,
        description="samples drawn at most for a full trace that keeps hitting max_tokens; a "
        "question none of whose tries ends gets a prefix row instead",
    )


class LabelFilterConfig(_Strict):
    """The paper's supervised variant "UPFT + label filter" (needs gold answers).

    Each question gets ``samples`` complete answers; the first whose final answer verifies
    against the gold answer gives the prefix row (its first L tokens). Not label-free, and it
    samples about as much as rejection-sampling fine-tuning.
    """

    enabled: bool = False
    samples: int = Field(default=16, ge=1, le=256, description="complete answers per question")
    on_no_correct: Literal["drop", "unfiltered"] = Field(
        default="drop",
        description="a question without a correct answer: drop it, or keep sample 0's prefix",
    )


class OutputConfig(_Strict):
    """Where the version directory goes, and how sampling results are sharded for resume."""

    dir: str = "./out"
    shard_size: int = Field(default=64, ge=1, description="questions per persisted sampling shard")


class ExecutorConfig(_Strict):
    """Who samples the shards: this process (``local``) or engine replicas on a Ray cluster.

    Not part of the fingerprint: where a shard runs does not change its samples, so a build
    started on Ray resumes locally and vice versa. A shard is ``output.shard_size`` questions.
    """

    # Where the shard size lives instead, for the error when someone puts it here.
    SHARD_SIZE_HOME: ClassVar[str] = (
        "belongs in the output section (output.shard_size): shards are the unit every "
        "executor persists and resumes, so their size is part of the build"
    )

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        default=None,
        description="Ray cluster to join: 'auto' (the node's running cluster) or "
        "'ray://head:10001'; empty: start a Ray instance on this machine",
    )
    replicas: int = Field(default=1, ge=1, description="engine replicas (data parallel)")
    cpus_per_replica: int = Field(default=1, ge=1, description="CPU cores each replica holds")
    gpus_per_replica: int | None = Field(
        default=None,
        ge=0,
        description="GPUs each replica holds; empty: model.tensor_parallel_size on a cluster "
        "with GPUs, 0 on one without",
    )
    max_shard_attempts: int = Field(
        default=3, ge=1, le=10, description="tries per shard when its replica is lost"
    )
    max_replica_restarts: int = Field(
        default=2, ge=0, description="times Ray restarts a lost replica (its engine reloads)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_shard_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and "shard_size" in data:
            raise ValueError(f"shard_size {cls.SHARD_SIZE_HOME}; move it there")
        return data


class PublishConfig(_Strict):
    """Defaults for push-to-hub."""

    repo_id: str | None = None
    private: bool = False

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        if value is not None and not is_repo_id(value):
            raise ValueError(
                f"repo_id {value!r} must look like 'org/name' (letters, digits, '.', '_', '-')"
            )
        return value


class Recipe(_Strict):
    """A whole build: name + version + one section per pipeline stage."""

    name: str
    version: str
    description: str | None = None
    license: str | None = None
    language: list[str] = Field(default_factory=lambda: ["en"])
    source: SourceConfig | None = Field(default=None, description="the question set (one)")
    sources: list[SourceConfig] | None = Field(
        default=None, min_length=1, description="several question sets, taken in order"
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prefix: PrefixConfig = Field(default_factory=PrefixConfig)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    label_filter: LabelFilterConfig = Field(default_factory=LabelFilterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"name {value!r} must be letters, digits, '.', '_' or '-' (it becomes a folder)"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # YAML reads `version: 1.0` as a float; say what is wrong with it, not "not a string".
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _SEMVER.match(str(value)):
            raise ValueError(f"version {value!r} is not a semantic version like 1.0.0")
        return str(value)

    @model_validator(mode="after")
    def _cross(self) -> Recipe:
        if self.model.backend == "openai":
            if self.executor.kind != "local":
                raise ValueError(
                    "a served model (model.backend: openai) is sampled by its server, which "
                    "batches the requests itself; remove executor.kind: ray (the server may "
                    "run on a cluster of its own)"
                )
            if self.mixture.full_trace_from == "prefix" and self.model.endpoint == "chat":
                raise ValueError(
                    "mixture.full_trace_from: prefix continues the chosen prefix's tokens, which "
                    "the chat endpoint cannot take; set model.endpoint: completions"
                )
        if (self.source is None) == (self.sources is None):
            raise ValueError(
                "a recipe reads its questions from 'source' (one question set) or 'sources' (a "
                "list of them): set exactly one of the two"
            )
        seen: dict[str, str] = {}
        for field, cfg in self.source_fields():
            if cfg.label in seen:
                raise ValueError(
                    f"{seen[cfg.label]} and {field} are both named {cfg.label!r}; give them "
                    "different 'name's"
                )
            seen[cfg.label] = field
        if self.label_filter.enabled:
            for field, cfg in self.source_fields():
                if not cfg.answer:
                    raise ValueError(
                        f"label_filter.enabled needs gold answers: set {field}.answer to the "
                        "answer field"
                    )
            if self.prefix.vote != "first" or self.prefix.samples != 1:
                raise ValueError(
                    "label_filter picks the prefix from label_filter.samples complete answers; "
                    "leave prefix.vote at 'first' and prefix.samples at 1"
                )
            if self.mixture.full_trace_from == "prefix":
                raise ValueError(
                    "label_filter takes full rows from its verified complete answers; remove "
                    "mixture.full_trace_from: prefix"
                )
        return self

    @property
    def question_sources(self) -> list[SourceConfig]:
        """Every source, in order (``source:`` is a list of one)."""
        return [cfg for _, cfg in self.source_fields()]

    def source_fields(self) -> list[tuple[str, SourceConfig]]:
        """(field path for messages, config) of every source: ``source`` or ``sources.N``."""
        if self.sources is not None:
            return [(f"sources.{i}", cfg) for i, cfg in enumerate(self.sources)]
        return [("source", self.source)] if self.source is not None else []

    @property
    def has_gold_answers(self) -> bool:
        """Whether any source names a gold-answer field."""
        return any(cfg.answer is not None for cfg in self.question_sources)

    @property
    def sampled_per_question(self) -> int:
        """Phase-1 samples per question: N prefixes, or K complete answers (label filter)."""
        return self.label_filter.samples if self.label_filter.enabled else self.prefix.samples

    @property
    def phase1_max_tokens(self) -> int:
        """Phase-1 token limit: L, or a whole answer's budget (label filter)."""
        return self.sampling.max_tokens if self.label_filter.enabled else self.prefix.length

    def resolved_dict(self) -> dict[str, Any]:
        """Every field with its effective value, in declaration order (of ``source`` and
        ``sources``, the one the recipe uses)."""
        data = self.model_dump(mode="json")
        data.pop("sources" if self.sources is None else "source")
        return data

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (what goes into the output directory)."""
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False, allow_unicode=True)


def parse_recipe(data: Any, where: str = "<recipe>", root: yaml.Node | None = None) -> Recipe:
    """Validate an already-parsed mapping; errors name field paths (and lines when known)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, where, root, Recipe, "recipe")) from None


def load_recipe(path: str | Path) -> tuple[Recipe, Path]:
    """Read and validate a recipe file; relative source paths resolve against its folder."""
    data, root = read_mapping(path, RecipeError, "recipe", allow_empty=False)
    recipe = parse_recipe(data, str(path), root)
    return recipe, Path(path).parent.resolve()


def apply_overrides(recipe: Recipe, **flags: Any) -> Recipe:
    """CLI flags win over the file: ``out``, ``limit`` (of each source), ``backend`` (None means
    not given)."""
    data = recipe.resolved_dict()
    if flags.get("out") is not None:
        data["output"]["dir"] = str(flags["out"])
    if flags.get("limit") is not None:  # every source's limit
        for cfg in data["sources"] if "sources" in data else [data["source"]]:
            cfg["limit"] = int(flags["limit"])
    if flags.get("backend") is not None:
        data["model"] = drop_for_backend(data["model"], flags["backend"])
        data["model"]["backend"] = flags["backend"]
    return parse_recipe(data, "command-line flags")
