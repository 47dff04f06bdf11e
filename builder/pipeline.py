"""The build: recipe -> questions -> phase 1 -> prefix choice -> phase 2 -> files.

This module only orchestrates; each step lives in the module that owns it: ``sources``
(questions), ``resolve`` (decoding values), ``executor`` + ``sampling/`` (engines), ``store``
(persisted shards), ``prefixes`` (vote / label filter / token-exact settling), ``mixture``
(rows), ``manifest`` (numbers) and ``writer`` (the version directory). The pipeline owns the
rules that span steps: the fingerprint check against an existing version directory (same
fingerprint: nothing to do, no engine is loaded; different: refuse unless ``force``), which
shards are left to sample, the order of the phases and the re-sampling of full traces that
never ended.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.errors import OutputError, SamplingError
from builder.executor import Executor, LocalExecutor, ShardRequest
from builder.manifest import (
    RFT_SAMPLES_PER_QUESTION,
    Manifest,
    agreement_summary,
    build_manifest,
    fingerprint,
    token_accounting,
)
from builder.mixture import assemble, full_trace_ids, generated_tokens
from builder.models import ResolvedModel, resolve_model
from builder.prefixes import LabelFilterPicks, PrefixChoice, choose_prefixes, label_filter_picks
from builder.progress import phase_progress
from builder.prompts import echo_share, encode_prompt, instruction_markers, messages
from builder.recipe import Recipe
from builder.resolve import decoding_sources, generation_defaults, resolve
from builder.sampling import make_sampler
from builder.sampling.base import Sample, Sampler
from builder.sources import LoadedSource, Question, load_questions
from builder.store import ShardStore
from builder.writer import finish_release, read_existing_fingerprint, stage_release

logger = logging.getLogger(__name__)

Samples = dict[str, list[Sample]]
PromptFn = Callable[[list[Question]], list[list[int]]]


@dataclass
class BuildResult:
    """What a build did: ``built`` a new version directory, or found it ``unchanged``."""

    path: Path
    status: str
    manifest: Manifest
    engine_calls: int = 0


@dataclass
class _Build:
    """The state one build carries between its phases."""

    recipe: Recipe
    model: ResolvedModel
    executor: Executor
    store: ShardStore
    quiet: bool
    timings: dict[str, float]
    decoding_sources: dict[str, str]
    _tokenizer: Any = None
    resume: dict[str, int] = field(
        default_factory=lambda: {
            "prefix_shards_reused": 0,
            "prefix_shards_sampled": 0,
            "full_shards_reused": 0,
            "full_shards_sampled": 0,
        }
    )

    def tokenizer(self) -> Any:
        """The engine's tokenizer when one is loaded here, else the model's own (no engine)."""
        if self.executor.tokenizer is not None:
            return self.executor.tokenizer
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            rev = {"revision": self.model.revision} if self.recipe.model.revision else {}
            self._tokenizer = AutoTokenizer.from_pretrained(self.model.path, **rev)
            if self.recipe.model.chat_template is not None:
                self._tokenizer.chat_template = self.recipe.model.chat_template
        return self._tokenizer


def token_budget(recipe: Recipe, questions: int) -> dict[str, int]:
    """Upper bounds on sampled tokens per phase (every full-trace try may hit max_tokens)."""
    n_full = (
        0
        if recipe.label_filter.enabled
        else int(round(recipe.mixture.full_trace_ratio * questions))
    )
    prefix = questions * recipe.sampled_per_question * recipe.phase1_max_tokens
    full = n_full * recipe.mixture.full_trace_tries * recipe.sampling.max_tokens
    return {"full_questions": n_full, "prefix": prefix, "full": full, "total": prefix + full}


def plan(recipe: Recipe, base_dir: Path | None) -> dict[str, Any]:
    """What a build would sample, without loading a model (``--dry-run``)."""
    loaded = load_questions(recipe.source, base_dir)
    q = len(loaded.questions)
    lf = recipe.label_filter.enabled
    budget = token_budget(recipe, q)
    n_full = budget["full_questions"]
    rft_bound = RFT_SAMPLES_PER_QUESTION * q * recipe.sampling.max_tokens
    return {
        "output": str(Path(recipe.output.dir) / recipe.name / recipe.version),
        "source": loaded.manifest_entry(),
        "questions": q,
        "prefix_phase": {
            "prompts": q,
            "samples": q * recipe.sampled_per_question,
            "max_tokens_each": recipe.phase1_max_tokens,
            "token_bound": budget["prefix"],
            "prompt": "plain" if lf else recipe.prefix.sample_prompt,
        },
        "full_phase": {
            "prompts": n_full,
            "samples": n_full,
            "max_tokens_each": recipe.sampling.max_tokens,
            "max_tries": recipe.mixture.full_trace_tries,
            "token_bound": budget["full"],
        },
        "token_bound": budget["total"],
        "rft_token_bound": rft_bound,
        "bound_ratio_vs_rft": round(budget["total"] / rft_bound, 4) if rft_bound else None,
    }


def _shards(items: list[Question], size: int) -> list[list[Question]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _sample_phase(
    b: _Build,
    phase: str,
    questions: list[Question],
    make_prompts: PromptFn,
    n: int,
    max_tokens: int,
    seed: int,
    label: str,
    counter: str,
) -> Samples:
    """Sample every shard of a phase that is not persisted yet; persist each as it arrives."""
    shards = _shards(questions, b.recipe.output.shard_size)
    out: Samples = {}
    missing = [i for i in range(len(shards)) if not b.store.has(phase, i)]
    if missing:
        b.executor.prepare()  # engines start before the bar, so its rate counts sampling only
    with phase_progress(label, len(questions), enabled=not b.quiet) as advance:
        for index, shard in enumerate(shards):
            if index not in missing:
                loaded = b.store.load(phase, index)
                out.update({q.id: loaded[q.id] for q in shard})
                b.resume[f"{counter}_shards_reused"] += 1
                advance(len(shard), 0)
        requests = [
            ShardRequest(
                phase,
                i,
                tuple(q.id for q in shards[i]),
                tuple(tuple(p) for p in make_prompts(shards[i])),
                n,
                max_tokens,
                seed,
            )
            for i in missing
        ]

        def done(req: ShardRequest, results: list[list[Sample]]) -> None:
            b.store.save(req.phase, req.index, list(req.question_ids), results)
            out.update(zip(req.question_ids, results, strict=True))
            b.resume[f"{counter}_shards_sampled"] += 1

        if requests:
            b.executor.run(requests, done, advance)
    return out


def _try_seed(seed: int, attempt: int) -> int:
    """The sampling seed of a full trace's ``attempt``-th try (the first keeps the recipe's)."""
    if attempt == 1:
        return seed
    digest = hashlib.sha256(f"{seed}:full-trace-try:{attempt}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _sample_full_traces(
    b: _Build, full_qs: list[Question], make_prompts: PromptFn, budget: int
) -> Samples:
    """One trace per question; traces cut off by ``max_tokens`` are sampled again, up to
    ``mixture.full_trace_tries`` times in all. Returns every try, in order, per question.

    Each try is its own persisted phase (``full``, ``full-2``, ...) with its own seed, and the
    questions of try k are those whose try k-1 did not end: both follow from what is stored,
    so an interrupted build resumes into the same tries.
    """
    r = b.recipe
    tries: Samples = {q.id: [] for q in full_qs}
    pending = full_qs
    for attempt in range(1, r.mixture.full_trace_tries + 1):
        if not pending:
            break
        phase = "full" if attempt == 1 else f"full-{attempt}"
        label = "phase 2: full traces" + ("" if attempt == 1 else f" (try {attempt})")
        got = _sample_phase(
            b,
            phase,
            pending,
            make_prompts,
            1,
            budget,
            _try_seed(r.sampling.seed, attempt),
            label,
            counter="full",
        )
        for q in pending:
            tries[q.id].append(got[q.id][0])
        pending = [q for q in pending if got[q.id][0].finish_reason != "stop"]
    if pending:
        logger.info(
            "%d full trace(s) never ended within max_tokens=%d in %d tries; those "
            "questions get prefix rows",
            len(pending),
            budget,
            r.mixture.full_trace_tries,
        )
    return tries


def _echo(b: _Build, phase1: Samples, phase2: Samples) -> dict[str, Any]:
    """How often the first L tokens of samples repeat the instruction's wording, per phase."""
    r = b.recipe
    markers = instruction_markers(r.prefix.instruction)
    tok = b.tokenizer()

    def share(groups: Samples) -> float | None:
        heads = [s.token_ids[: r.prefix.length] for samples in groups.values() for s in samples]
        if not heads:
            return None
        value = echo_share(tok.batch_decode(heads, skip_special_tokens=True), markers)
        return None if value is None else round(value, 4)

    return {
        "sample_prompt": "plain" if r.label_filter.enabled else r.prefix.sample_prompt,
        "markers": markers,
        "measured_on": f"first {r.prefix.length} tokens",
        "prefix_samples": share(phase1),
        "full_traces": share(phase2),
    }


def _local_executor(
    recipe: Recipe, model: ResolvedModel, questions: int, sampler: Sampler | None
) -> Executor:
    settings = recipe.sampling.settings()
    if sampler is not None:
        if sampler.settings.seed != settings.seed:
            logger.warning(
                "the engine was created with seed %d, the recipe asks for %d",
                sampler.settings.seed,
                settings.seed,
            )
        sampler.settings = settings
        return LocalExecutor(sampler=sampler)
    m = recipe.model
    options = m.engine_options(token_budget(recipe, questions)["total"])

    def factory() -> Sampler:
        logger.info("loading %s with %s", model.display_name, m.backend)
        return make_sampler(
            m.backend, model.path, model.revision, settings, options, m.chat_template
        )

    return LocalExecutor(factory=factory)


def build(
    recipe: Recipe,
    base_dir: Path | None = None,
    *,
    force: bool = False,
    quiet: bool = False,
    sampler: Sampler | None = None,
    executor: Executor | None = None,
) -> BuildResult:
    """Run the whole build; returns the version directory (new or already complete).

    ``sampler`` runs every shard on an engine the caller owns (tests, benchmarks);
    ``executor`` hands the shards to another executor (e.g. a pool of engine replicas).
    """
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    loaded: LoadedSource = load_questions(recipe.source, base_dir)
    timings["source"] = time.monotonic() - t0

    model = resolve_model(recipe.model.id, recipe.model.revision)
    gen = generation_defaults(model)
    sources = decoding_sources(recipe, gen)
    recipe = resolve(recipe, model, gen)
    fp = fingerprint(recipe, loaded.info, model.revision)
    root = Path(recipe.output.dir) / recipe.name
    final = root / recipe.version
    staging = root / f".{recipe.version}.partial"

    existing = read_existing_fingerprint(final) if final.exists() else None
    if final.exists() and not force:
        if existing == fp:
            shutil.rmtree(staging, ignore_errors=True)
            logger.info("%s is already built with this recipe; nothing to do", final)
            manifest = Manifest.read(final / "manifest.json")
            return BuildResult(final, "unchanged", manifest)
        raise OutputError(
            f"{final} already exists and was built from a different recipe, source or model "
            f"(fingerprint {str(existing)[:12]} vs {fp[:12]}); bump `version` in the recipe to "
            "build a new version, or pass --force to replace it"
        )

    if executor is None and sampler is None and recipe.executor.kind == "ray":
        from builder.ray_executor import RayExecutor

        bound = token_budget(recipe, len(loaded.questions))["total"]
        executor = RayExecutor.from_recipe(recipe, bound)
    if executor is None:
        executor = _local_executor(recipe, model, len(loaded.questions), sampler)
    b = _Build(
        recipe, model, executor, ShardStore(staging, fp, fresh=force), quiet, timings, sources
    )
    try:
        return _run(b, loaded, final, fp, replace=final.exists(), t0=t0)
    finally:
        executor.close()
        b.store.close()  # release the build lock; the shards stay for a resume


def _phase_timing(b: _Build, key: str, started: float, loaded_before: float) -> None:
    # Engines start lazily inside the first phase that samples; report that time on its own.
    b.timings[key] = time.monotonic() - started - (b.executor.engine_load_s - loaded_before)


def _run(
    b: _Build, loaded: LoadedSource, final: Path, fp: str, replace: bool, t0: float
) -> BuildResult:
    r = b.recipe
    questions = loaded.questions
    system, instruction = r.model.system_prompt, r.prefix.instruction
    lf = r.label_filter.enabled
    # The paper samples prefixes with the plain question and cuts; the instruction belongs to
    # the training prompt only (sampling under it makes answers echo its wording).
    sample_instruction = (
        instruction if (r.prefix.sample_prompt == "instruction" and not lf) else None
    )

    def prefix_prompts(shard: list[Question]) -> list[list[int]]:
        tok = b.tokenizer()
        return [encode_prompt(tok, messages(q.text, sample_instruction, system)) for q in shard]

    started, loaded_before = time.monotonic(), b.executor.engine_load_s
    label = "phase 1: answers to filter" if lf else "phase 1: prefixes"
    phase1 = _sample_phase(
        b,
        "prefix",
        questions,
        prefix_prompts,
        r.sampled_per_question,
        r.phase1_max_tokens,
        r.sampling.seed,
        label,
        counter="prefix",
    )
    _phase_timing(b, "prefix_phase", started, loaded_before)

    started = time.monotonic()
    picks: LabelFilterPicks | None = label_filter_picks(questions, phase1) if lf else None
    choices = choose_prefixes(
        b.tokenizer(), questions, phase1, r.prefix, picks.chosen if picks else None
    )
    b.timings["vote"] = time.monotonic() - started

    full_ids = full_trace_ids([q.id for q in questions], r.mixture.full_trace_ratio, r.mixture.seed)
    full_qs = [] if lf else [q for q in questions if q.id in full_ids]
    from_prefix = r.mixture.full_trace_from == "prefix"
    # Continued traces keep the whole trace (prefix + continuation) within max_tokens.
    budget = (
        max(1, r.sampling.max_tokens - r.prefix.length) if from_prefix else r.sampling.max_tokens
    )

    def full_prompts(shard: list[Question]) -> list[list[int]]:
        tok = b.tokenizer()
        out = []
        for q in shard:
            ids = encode_prompt(tok, messages(q.text, None, system))
            out.append(ids + choices[q.id].ids if from_prefix else ids)
        return out

    started, loaded_before = time.monotonic(), b.executor.engine_load_s
    phase2 = _sample_full_traces(b, full_qs, full_prompts, budget)
    _phase_timing(b, "full_phase", started, loaded_before)
    if b.executor.engine_load_s:
        b.timings["engine_load"] = b.executor.engine_load_s

    prefix_cost = sum(generated_tokens(x) for samples in phase1.values() for x in samples)
    full_cost = sum(generated_tokens(x) for samples in phase2.values() for x in samples)
    if from_prefix:
        phase2 = _continued(b, choices, phase2)
    # Complete answers sampled: the full traces, or with the label filter every phase-1 answer.
    complete = [x for samples in (phase1 if lf else phase2).values() for x in samples]
    mean_full = (sum(generated_tokens(x) for x in complete) / len(complete)) if complete else None
    echo = _echo(b, phase1, phase2)

    started = time.monotonic()
    tables = assemble(r, questions, choices, phase1, phase2, picks)
    kinds = tables.mixture["kind"]
    if not kinds:
        raise SamplingError(
            f"the label filter found no answer reaching the gold answer among "
            f"{r.label_filter.samples} samples for any of the {len(questions)} questions, so "
            "nothing is left to train on; raise label_filter.samples, or set "
            "label_filter.on_no_correct: unfiltered"
        )
    n_full_rows = sum(1 for k in kinds if k == "full")
    counts = {
        "questions": len(questions),
        "prefix_rows": len(kinds) - n_full_rows,
        "full_rows": n_full_rows,
        "mixture_rows": len(kinds),
        "trace_rows": len(tables.traces["question_id"]),
        **{
            k: tables.stats[k]
            for k in (
                "full_trace_resampled",
                "full_trace_fallback",
                "label_filter_dropped",
                "label_filter_unfiltered",
            )
        },
    }
    recipe_yaml = r.to_yaml()
    release = stage_release(
        b.store.staging,
        {"mixture": tables.mixture, "prefixes": tables.prefixes, "traces": tables.traces},
        recipe_yaml,
    )
    b.timings["write"] = time.monotonic() - started
    b.timings["total"] = time.monotonic() - t0

    manifest_model: dict[str, Any] = {
        "id": r.model.id,
        "revision": b.model.revision,
        "name": b.model.display_name,
    }
    engine = b.executor.engine_info()
    if engine:
        manifest_model["engine"] = engine
    curves = np.array(tables.prefixes["agreement_curve"], dtype=np.float64)
    manifest = build_manifest(
        r,
        fp,
        loaded.manifest_entry(),
        manifest_model,
        counts,
        token_accounting(
            prefix_cost, full_cost, mean_full, len(questions), tables.stats["tuning_tokens"]
        ),
        agreement_summary(curves, tables.prefixes["agreement"], tables.prefixes["prefix_tokens"]),
        tables.stats["accuracy"],
        b.timings,
        b.resume,
        echo,
        b.decoding_sources,
        executor=b.executor.describe(),
    )
    finish_release(
        release,
        final,
        manifest,
        recipe_yaml,
        tables.prefixes["agreement_curve"],
        tables.prefixes["agreement"],
        replace,
    )
    b.store.remove()
    logger.info("wrote %s", final)
    return BuildResult(final, "built", manifest, b.executor.engine_calls)


def _continued(b: _Build, choices: dict[str, PrefixChoice], phase2: Samples) -> Samples:
    """Traces sampled from a prefix, made whole: the prefix followed by the continuation."""
    tok = b.tokenizer()
    return {
        qid: [
            Sample(
                choices[qid].ids + x.token_ids,
                tok.decode(choices[qid].ids + x.token_ids, skip_special_tokens=True),
                x.finish_reason,
                x.cumulative_logprob,
            )
            for x in samples
        ]
        for qid, samples in phase2.items()
    }
