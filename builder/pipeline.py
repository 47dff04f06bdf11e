"""The build: recipe -> questions -> phase 1 -> prefix choice -> phase 2 -> files.

This module only orchestrates; each step lives in the module that owns it: ``sources``
(questions), ``resolve`` (decoding values), ``phases`` (sampling phases as shard streams, resume,
full-trace tries), ``executor`` + ``sampling/`` (engines), ``store`` (persisted shards),
``prefixes`` (vote / label filter / token-exact settling, per shard), ``release`` (rows,
assembled shard by shard, and the totals), ``manifest`` (numbers) and ``writer`` (the version
directory). The pipeline owns the rules that span steps: the fingerprint check against an
existing version directory (same fingerprint: nothing to do, no engine is loaded; different:
refuse unless ``force``), which questions fit the model's context, the full-trace share, and
the order of the phases. After the source stage nothing grows with the number of questions
but the question list itself: samples stay on disk and are read back one shard at a time.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.answers import GoldAudit, audit_source
from builder.errors import OutputError, SamplingError, SourceError
from builder.executor import Executor, LocalExecutor
from builder.manifest import (
    RFT_SAMPLES_PER_QUESTION,
    Manifest,
    agreement_summary,
    build_manifest,
    fingerprint,
    token_accounting,
)
from builder.manifest_schema import GoldAnswers
from builder.mixture import full_trace_share
from builder.models import ResolvedModel, load_tokenizer, resolve_model
from builder.phases import PhaseRunner, Shards, sample_full_traces
from builder.prefixes import PrefixChoice, choices_from_frame, choose_all
from builder.prompts import encode_prompt, fit_context, instruction_markers, messages, model_context
from builder.recipe import Recipe
from builder.release import assemble_release
from builder.resolve import decoding_sources, generation_defaults, resolve
from builder.sampling import make_sampler
from builder.sampling.base import Sampler
from builder.served import chat_of, wants_messages
from builder.sources import LoadedSource, Question, load_questions
from builder.store import ShardStore
from builder.writer import disk_errors, finish_release, open_release, read_existing_fingerprint

logger = logging.getLogger(__name__)


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
    gold: GoldAudit | None = None  # the source's gold answers (manifest.gold_answers)

    def __post_init__(self) -> None:
        self.runner = PhaseRunner(self.executor, self.store, self.quiet)

    def tokenizer(self) -> Any:
        """The engine's tokenizer when one is loaded here, else the model's own (no engine)."""
        if self.executor.tokenizer is not None:
            return self.executor.tokenizer
        if self._tokenizer is None:
            m = self.recipe.model
            self._tokenizer = load_tokenizer(self.model, bool(m.revision), m.chat_template)
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
    src = recipe.source
    gold = audit_source(loaded.questions, src.answer, src.answer_pattern, lf)
    budget = token_budget(recipe, q)
    n_full = budget["full_questions"]
    rft_bound = RFT_SAMPLES_PER_QUESTION * q * recipe.sampling.max_tokens
    return {
        "output": str(Path(recipe.output.dir) / recipe.name / recipe.version),
        "source": loaded.manifest_entry(),
        "gold_answers": gold.as_dict() if gold is not None else None,
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
    process_exiting: bool = False,
) -> BuildResult:
    """Run the whole build; returns the version directory (new or already complete).

    ``sampler`` runs every shard on an engine the caller owns (tests, benchmarks);
    ``executor`` hands the shards to another executor (e.g. a pool of engine replicas).
    ``process_exiting``: the caller's process ends right after (the console script), so an
    engine this build loaded in-process is left to the exit instead of being shut down.
    """
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    loaded: LoadedSource = load_questions(recipe.source, base_dir)
    timings["source"] = time.monotonic() - t0

    if recipe.model.backend == "openai":
        from builder.served import resolve_served

        model, sources, recipe = resolve_served(recipe)
    else:
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

    src, lf = recipe.source, recipe.label_filter.enabled
    gold = audit_source(loaded.questions, src.answer, src.answer_pattern, lf)
    if executor is None and sampler is None and recipe.executor.kind == "ray":
        from builder.ray_executor import RayExecutor

        bound = token_budget(recipe, len(loaded.questions))["total"]
        executor = RayExecutor.from_recipe(recipe, bound)
    if executor is None and sampler is None and recipe.model.backend == "openai":
        from builder.served import make_build_executor

        executor = make_build_executor(recipe, model, staging)
    if executor is None:
        executor = _local_executor(recipe, model, len(loaded.questions), sampler)
    b = _Build(
        recipe, model, executor, ShardStore(staging, fp, fresh=force), quiet, timings, sources
    )
    b.gold = gold
    try:
        return _run(b, loaded, final, fp, replace=final.exists(), t0=t0)
    finally:
        executor.close(process_exiting=process_exiting)
        b.store.close()  # release the build lock; the shards stay for a resume


def _phase_timing(b: _Build, key: str, started: float, loaded_before: float) -> None:
    # Engines start lazily inside the first phase that samples; report that time on its own.
    b.timings[key] = time.monotonic() - started - (b.executor.engine_load_s - loaded_before)


def _drop_too_long(
    b: _Build, loaded: LoadedSource, prompt: Callable[[Question], list[int]]
) -> None:
    r = b.recipe
    context = model_context(r.model.max_model_len, b.model.path)
    kept, skipped = fit_context(loaded.questions, prompt, context, r.phase1_max_tokens)
    if not skipped:
        return
    loaded.counts.too_long = len(skipped)
    loaded.counts.kept = len(kept)
    loaded.questions = kept
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    logger.warning(
        "%d question(s) too long for the model context (%d tokens, %d of them kept for "
        "phase 1) skipped: %s; raise model.max_model_len if the model allows it",
        len(skipped),
        context,
        r.phase1_max_tokens,
        shown,
    )
    if not kept:
        raise SourceError(
            f"no question fits the model context of {context} tokens (prompt plus "
            f"{r.phase1_max_tokens} sampled tokens); raise model.max_model_len or use "
            "shorter questions"
        )


def _run(
    b: _Build, loaded: LoadedSource, final: Path, fp: str, replace: bool, t0: float
) -> BuildResult:
    r = b.recipe
    system, instruction = r.model.system_prompt, r.prefix.instruction
    lf = r.label_filter.enabled
    # The paper samples prefixes with the plain question and cuts; the instruction belongs to
    # the training prompt only (sampling under it makes answers echo its wording).
    sample_instruction = (
        instruction if (r.prefix.sample_prompt == "instruction" and not lf) else None
    )

    def prefix_prompt(q: Question) -> list[int]:
        return encode_prompt(b.tokenizer(), messages(q.text, sample_instruction, system))

    # A served model's chat endpoint takes the messages and applies its own template.
    chats = wants_messages(r.model)

    _drop_too_long(b, loaded, prefix_prompt)
    size = r.output.shard_size
    questions = Shards.of(loaded.questions, size)
    runner = b.runner

    started, loaded_before = time.monotonic(), b.executor.engine_load_s
    runner.sample(
        "prefix",
        questions,
        lambda _, shard: [prefix_prompt(q) for q in shard],
        r.sampled_per_question,
        r.phase1_max_tokens,
        r.sampling.seed,
        "phase 1: answers to filter" if lf else "phase 1: prefixes",
        counter="prefix",
        derived=("choice",),
        make_messages=(
            (lambda shard: [chat_of(messages(q.text, sample_instruction, system)) for q in shard])
            if chats
            else None
        ),
    )
    _phase_timing(b, "prefix_phase", started, loaded_before)

    started = time.monotonic()
    choose_all(runner, questions, b.tokenizer(), r)
    b.timings["vote"] = time.monotonic() - started

    share = full_trace_share(
        (q.id for q in loaded.questions), r.mixture.full_trace_ratio, r.mixture.seed
    )
    full_qs = Shards([], 0, size) if lf else questions.select(lambda q: q.id in share, share.size)
    from_prefix = r.mixture.full_trace_from == "prefix"
    # Continued traces keep the whole trace (prefix + continuation) within max_tokens.
    budget = (
        max(1, r.sampling.max_tokens - r.prefix.length) if from_prefix else r.sampling.max_tokens
    )
    # Which question shard holds each full-trace question's chosen prefix.
    home = (
        {q.id: i // size for i, q in enumerate(loaded.questions) if q.id in share}
        if from_prefix
        else {}
    )

    def full_prompts(_: int, shard: list[Question]) -> list[list[int]]:
        tok = b.tokenizer()
        out = []
        chosen: dict[str, PrefixChoice] = {}
        for q in shard:
            ids = encode_prompt(tok, messages(q.text, None, system))
            if from_prefix:
                if q.id not in chosen:
                    frame = b.store.load_frame("choice", home[q.id])
                    chosen.update(choices_from_frame(frame, lf)[0])
                ids = ids + chosen[q.id].ids
            out.append(ids)
        return out

    started, loaded_before = time.monotonic(), b.executor.engine_load_s
    tries = sample_full_traces(
        runner,
        full_qs,
        full_prompts,
        budget,
        r.sampling.seed,
        r.mixture.full_trace_tries,
        (lambda shard: [chat_of(messages(q.text, None, system)) for q in shard]) if chats else None,
    )
    _phase_timing(b, "full_phase", started, loaded_before)
    if b.executor.engine_load_s:
        b.timings["engine_load"] = b.executor.engine_load_s

    started = time.monotonic()
    writer = open_release(b.store.staging)
    with disk_errors(writer.root):
        totals = assemble_release(r, questions, runner, tries, share, b.tokenizer(), writer)
    if not totals.mixture_rows:
        raise SamplingError(
            f"the label filter found no answer reaching the gold answer among "
            f"{r.label_filter.samples} samples for any of the {questions.count} questions, so "
            "nothing is left to train on; raise label_filter.samples, or set "
            "label_filter.on_no_correct: unfiltered"
        )
    b.timings["write"] = time.monotonic() - started
    b.timings["total"] = time.monotonic() - t0

    # A server's own usage counts, where it reported them for every shard.
    prefix_cost, full_cost = totals.prefix_cost, totals.full_cost
    reported = b.executor.reported_tokens()
    if reported is not None:
        prefix_cost = reported.get("prefix", 0)
        full_cost = sum(v for k, v in reported.items() if k != "prefix")
    manifest_model: dict[str, Any] = {
        "id": r.model.id,
        "revision": b.model.revision,
        "name": b.model.display_name,
    }
    engine = b.executor.engine_info()
    if engine:
        manifest_model["engine"] = engine
    echo = {
        "sample_prompt": "plain" if lf else r.prefix.sample_prompt,
        "markers": instruction_markers(instruction),
        "measured_on": f"first {r.prefix.length} tokens",
        "prefix_samples": totals.echo_prefix.share(),
        "full_traces": totals.echo_full.share(),
    }
    manifest = build_manifest(
        r,
        fp,
        loaded.manifest_entry(),
        manifest_model,
        totals.counts(),
        token_accounting(
            prefix_cost,
            full_cost,
            totals.mean_complete(),
            questions.count,
            totals.tuning_tokens(),
        ),
        agreement_summary(totals.agreement),
        totals.accuracy(),
        b.timings,
        runner.resume,
        echo,
        b.decoding_sources,
        executor=b.executor.describe(),
    )
    if b.gold is not None:
        manifest.gold_answers = GoldAnswers.model_validate(b.gold.as_dict())
    recipe_yaml = r.to_yaml()
    finish_release(
        writer.root, final, manifest, recipe_yaml, totals.agreement, replace, totals.sizes
    )
    b.store.remove()
    logger.info("wrote %s", final)
    return BuildResult(final, "built", manifest, b.executor.engine_calls)
