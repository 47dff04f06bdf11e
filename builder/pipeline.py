"""The build: recipe -> questions -> phase 1 -> prefix choice -> phase 2 -> files.

This module only orchestrates; each step lives in the module that owns it: ``source_files``,
``sources``, ``selection`` and ``question_store`` (questions), ``resolve`` (decoding values),
``phases`` (sampling phases as shard streams, resume, full-trace tries), ``executor`` +
``sampling/`` (engines), ``store`` (persisted shards), ``prefixes`` (vote / label filter /
token-exact settling, per shard), ``release`` (rows, assembled shard by shard, and the totals),
``manifest`` (numbers) and ``writer`` (the version directory). The pipeline owns the rules that
span steps: the fingerprint check against an existing version directory (same fingerprint:
nothing to do, no engine is loaded; different: refuse unless ``force``), which questions fit
the model's context, the full-trace share, and the order of the phases. Nothing grows with the
number of questions: the questions stay on disk (``question_store``, in the staging folder) and
the samples too; both are read back one shard at a time.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.answers import GoldAudit, audit_source
from builder.errors import OutputError, SamplingError, SourceError
from builder.executor import Executor, LocalExecutor
from builder.manifest import (
    RFT_SAMPLES_PER_QUESTION,
    EngineInfo,
    ExecutorInfo,
    Manifest,
    ModelInfo,
    Provenance,
    Resume,
    RunRecord,
    SourceInfo,
    Timings,
    build_manifest,
    fingerprint,
    release_contents,
)
from builder.manifest_schema import GoldAnswers
from builder.mixture import FullTraceShare, full_trace_share
from builder.models import ResolvedModel, load_tokenizer, resolve_model
from builder.overlap import ShardWorkers
from builder.phases import MessagesFn, PhaseRunner, Shards, sample_full_traces
from builder.progress import phase_progress
from builder.prompts import encode_prompt, messages, model_context, too_long
from builder.question_store import Collected, QuestionStore, QuestionView, collect
from builder.recipe import Recipe
from builder.release import Assembler, Release
from builder.resolve import decoding_sources, generation_defaults, resolve
from builder.sampling import make_sampler
from builder.sampling.base import Sampler
from builder.served import chat_of, wants_messages
from builder.source_files import OpenedSource, open_source
from builder.sources import Question
from builder.store import ShardStore, disk_error, staging_dir
from builder.writer import ReleaseWriter, finish_release, open_release, read_existing_fingerprint

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
    writer: ReleaseWriter = field(init=False)
    # full_trace_from: prefix -- the question shard holding each full-trace question's choice,
    # and the last shard of choices read for the prompts
    home: dict[str, int] = field(default_factory=dict)
    choice_cache: dict[int, dict[str, list[int]]] = field(default_factory=dict)

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


def open_sources(recipe: Recipe, base_dir: Path | None) -> list[OpenedSource]:
    """Every source of the recipe, checked and identified (nothing is read yet)."""
    return [open_source(cfg, field, base_dir) for field, cfg in recipe.source_fields()]


def plan(recipe: Recipe, base_dir: Path | None) -> dict[str, Any]:
    """What a build would sample, without loading a model (``--dry-run``): the sources are
    read, checked and de-duplicated in full, and only their counts are kept."""
    opened = open_sources(recipe, base_dir)
    lf = recipe.label_filter.enabled
    # The gold answers are audited over the kept questions, so those go to a temporary store
    # (on disk, read back a batch at a time) when a source has an answer field.
    found = collect(opened, keep=any(o.cfg.answer is not None for o in opened))
    try:
        q = found.kept
        gold = audit_gold(found, lf)
    finally:
        found.close()
    budget = token_budget(recipe, q)
    n_full = budget["full_questions"]
    rft_bound = RFT_SAMPLES_PER_QUESTION * q * recipe.sampling.max_tokens
    return {
        "output": str(Path(recipe.output.dir) / recipe.name / recipe.version),
        "sources": found.manifest_entries(),
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
    opened = open_sources(recipe, base_dir)
    timings["source"] = time.monotonic() - t0

    if recipe.model.backend == "openai":
        from builder.served import resolve_served

        model, sources, recipe = resolve_served(recipe)
    else:
        model = resolve_model(recipe.model.id, recipe.model.revision)
        gen = generation_defaults(model)
        sources = decoding_sources(recipe, gen)
        recipe = resolve(recipe, model, gen)
    fp = fingerprint(recipe, [o.info for o in opened], model.revision)
    final = Path(recipe.output.dir) / recipe.name / recipe.version
    staging = staging_dir(recipe.output.dir, recipe.name, recipe.version)

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

    # The folders this build makes (outermost first): a source that turns out unusable while
    # it is read leaves nothing behind, as when it was read before any folder was made.
    made = [p for p in (*reversed(staging.parents[:2]), staging) if not p.exists()]
    store = ShardStore(staging, fp, fresh=force)
    try:
        started = time.monotonic()
        try:
            found = _collect(opened, staging / "source")
            gold = audit_gold(found, recipe.label_filter.enabled)
        except SourceError:
            if made:
                store.close()
                shutil.rmtree(made[0], ignore_errors=True)
            raise
        timings["source"] += time.monotonic() - started
        assert found.store is not None
        if executor is None and sampler is None and recipe.executor.kind == "ray":
            from builder.ray_executor import RayExecutor

            bound = token_budget(recipe, found.store.count)["total"]
            executor = RayExecutor.from_recipe(recipe, bound)
        if executor is None and sampler is None and recipe.model.backend == "openai":
            from builder.served import make_build_executor

            executor = make_build_executor(recipe, model, staging)
        if executor is None:
            executor = _local_executor(recipe, model, found.store.count, sampler)
        b = _Build(recipe, model, executor, store, quiet, timings, sources)
        b.gold = gold
        try:
            return _run(b, found, final, fp, replace=final.exists(), t0=t0)
        finally:
            executor.close(process_exiting=process_exiting)
    finally:
        store.close()  # release the build lock; the shards stay for a resume


def audit_gold(found: Collected, label_filter: bool) -> GoldAudit | None:
    """The audit of the kept questions' gold answers (None: no source has an answer field);
    a label-filter build none of whose gold answers can match stops here, before sampling.
    With several sources it names each answer field as ``name.field``."""
    sources = [s for s in found.sources if s.cfg.answer is not None]
    if not sources:
        return None
    assert found.store is not None
    if len(found.sources) == 1:
        field, pattern = sources[0].cfg.answer, sources[0].cfg.answer_pattern
    else:
        field = ", ".join(f"{s.name}.{s.cfg.answer}" for s in sources)
        patterns = [f"{s.name}: {s.cfg.answer_pattern}" for s in sources if s.cfg.answer_pattern]
        pattern = "; ".join(patterns) or None
    return audit_source(found.store, field, pattern, label_filter)


def _collect(opened: list[OpenedSource], folder: Path) -> Collected:
    """The build's questions, read into its staging folder (or found there on a resume)."""
    try:
        return collect(opened, folder)
    except OSError as exc:
        raise disk_error(folder, exc, keep=folder.parent / "shards") from None


def _phase_timing(b: _Build, key: str, started: float, loaded_before: float) -> None:
    # Engines start lazily inside the first phase that samples; report that time on its own.
    b.timings[key] = time.monotonic() - started - (b.executor.engine_load_s - loaded_before)


def _drop_too_long(
    b: _Build, found: Collected, prompt: Callable[[Question], list[int]]
) -> QuestionStore | QuestionView:
    """The questions whose phase-1 prompt fits the model's context; the rest are counted per
    source and skipped with a warning (an error if none is left)."""
    assert found.store is not None
    r = b.recipe
    context = model_context(r.model.max_model_len, b.model.path)
    skipped: dict[str, str] = {}  # id -> source name
    for q in too_long(found.store, prompt, context, r.phase1_max_tokens):
        skipped[q.id] = q.source or ""
    if not skipped:
        return found.store
    for src, counts in zip(found.sources, found.counts, strict=True):
        n = sum(1 for name in skipped.values() if name == src.name)
        counts.too_long, counts.kept = n, counts.kept - n
    ids = list(skipped)
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    logger.warning(
        "%d question(s) too long for the model context (%d tokens, %d of them kept for "
        "phase 1) skipped: %s; raise model.max_model_len if the model allows it",
        len(ids),
        context,
        r.phase1_max_tokens,
        shown,
    )
    view = found.store.without(set(skipped))
    if not view.count:
        raise SourceError(
            f"no question fits the model context of {context} tokens (prompt plus "
            f"{r.phase1_max_tokens} sampled tokens); raise model.max_model_len or use "
            "shorter questions"
        )
    return view


@dataclass
class _Prompts:
    """The prompts (token ids) of both sampling phases of a build."""

    b: _Build

    def prefix(self, q: Question) -> list[int]:
        r = self.b.recipe
        # The paper samples prefixes with the plain question and cuts; the instruction belongs
        # to the training prompt only (sampling under it makes answers echo its wording).
        return encode_prompt(
            self.b.tokenizer(), messages(q.text, self._sampled_instruction(), r.model.system_prompt)
        )

    def prefix_shard(self, _: int, shard: list[Question]) -> list[list[int]]:
        return [self.prefix(q) for q in shard]

    def _sampled_instruction(self) -> str | None:
        r = self.b.recipe
        sampled_with = r.prefix.sample_prompt == "instruction" and not r.label_filter.enabled
        return r.prefix.instruction if sampled_with else None

    def prefix_messages(self) -> MessagesFn | None:
        """The phase-1 prompts as chat messages, for a served model's chat endpoint (which
        applies its own template); None for engines that take token ids."""
        r = self.b.recipe
        if not wants_messages(r.model):
            return None
        instruction, system = self._sampled_instruction(), r.model.system_prompt
        return lambda shard: [chat_of(messages(q.text, instruction, system)) for q in shard]

    def full_messages(self) -> MessagesFn | None:
        r = self.b.recipe
        if not wants_messages(r.model):
            return None
        system = r.model.system_prompt
        return lambda shard: [chat_of(messages(q.text, None, system)) for q in shard]

    def full_shard(self, _: int, shard: list[Question]) -> list[list[int]]:
        """Plain-question prompts; continued traces (``full_trace_from: prefix``) carry the
        chosen prefix after them, read from the shard of choices that holds it."""
        r, tok = self.b.recipe, self.b.tokenizer()
        out = [encode_prompt(tok, messages(q.text, None, r.model.system_prompt)) for q in shard]
        if r.mixture.full_trace_from == "prefix":
            for i, q in enumerate(shard):
                out[i] = out[i] + self._chosen(q.id)
        return out

    def _chosen(self, question_id: str) -> list[int]:
        home = self.b.home[question_id]
        if home not in self.b.choice_cache:
            table = self.b.store.load_table("choice", home)
            qids, ids = table.column("question_id").to_pylist(), table.column("ids").to_pylist()
            self.b.choice_cache = {home: dict(zip(qids, ids, strict=True))}
        return list(self.b.choice_cache[home][question_id])


def _run(
    b: _Build, found: Collected, final: Path, fp: str, replace: bool, t0: float
) -> BuildResult:
    prompts = _Prompts(b)
    kept = _drop_too_long(b, found, prompts.prefix)
    r = b.recipe
    size = r.output.shard_size
    questions = Shards(kept, kept.count, size)
    share = full_trace_share(kept.ids(), r.mixture.full_trace_ratio, r.mixture.seed)
    if r.mixture.full_trace_from == "prefix":
        b.home = {qid: i // size for i, qid in enumerate(kept.ids()) if qid in share}
    release = _sample_and_assemble(b, questions, share, prompts)
    if not (release.counts.prefix_rows + release.counts.full_rows):
        raise SamplingError(
            f"the label filter found no answer reaching the gold answer among "
            f"{r.label_filter.samples} samples for any of the {questions.count} questions, so "
            "nothing is left to train on; raise label_filter.samples, or set "
            "label_filter.on_no_correct: unfiltered"
        )
    b.timings["total"] = time.monotonic() - t0
    # A server's own usage counts, where it reported them for every shard.
    reported = b.executor.reported_tokens()
    if reported is not None:
        release.counts.prefix_cost = reported.get("prefix", 0)
        release.counts.full_cost = sum(v for k, v in reported.items() if k != "prefix")
    manifest = build_manifest(
        r, _provenance(b, found, fp), release_contents(r, release.counts), _run_record(b)
    )
    recipe_yaml = r.to_yaml()
    finish_release(
        b.writer.root,
        final,
        manifest,
        recipe_yaml,
        release.counts.agreement,
        replace,
        release.sizes,
    )
    b.store.remove()
    logger.info("wrote %s", final)
    return BuildResult(final, "built", manifest, b.executor.engine_calls)


def _sample_and_assemble(
    b: _Build, questions: Shards, share: FullTraceShare, prompts: _Prompts
) -> Release:
    """Both sampling phases and the rows, in the order that lets the most work overlap.

    Fresh full traces (the default) do not depend on phase 1, so they are sampled first, and
    every phase-1 shard is then chosen and written while the next ones are sampled. Traces
    continued from the chosen prefix need phase 1 first; the rows follow phase 2.
    """
    r = b.recipe
    lf = r.label_filter.enabled
    full_qs = (
        Shards([], 0, questions.size)
        if lf
        else questions.select(lambda q: q.id in share, share.size)
    )
    b.writer = open_release(b.store.staging)
    if r.mixture.full_trace_from == "prefix":
        _prefix_phase(b, questions, prompts, None)
        tries = _full_phase(b, full_qs, prompts)
        assembler = Assembler(r, b.runner, tries, share, b.tokenizer(), b.writer)
        started = time.monotonic()
        bar = phase_progress("assembling rows", questions.count, not b.quiet, summary=False)
        with bar as advance:
            for index, shard in enumerate(questions):
                assembler.add(index, shard)
                advance(len(shard), 0)
        release = assembler.close()
        b.timings["write"] = time.monotonic() - started
        return release
    if lf:
        tries, b.timings["full_phase"] = [], 0.0
    else:
        tries = _full_phase(b, full_qs, prompts)
    assembler = Assembler(r, b.runner, tries, share, b.tokenizer(), b.writer)
    _prefix_phase(b, questions, prompts, assembler)
    release = assembler.close()
    b.timings["write"] = assembler.seconds
    return release


def _prefix_phase(
    b: _Build, questions: Shards, prompts: _Prompts, assembler: Assembler | None
) -> None:
    """Phase 1, each shard chosen (and, with ``assembler``, written) beside the sampling."""
    r = b.recipe
    started, loaded_before = time.monotonic(), b.executor.engine_load_s
    add = None if assembler is None else assembler.add
    workers = ShardWorkers(b.store, b.tokenizer(), r, questions, add, quiet=b.quiet)
    with workers:
        b.runner.sample(
            "prefix",
            questions,
            prompts.prefix_shard,
            r.sampled_per_question,
            r.phase1_max_tokens,
            r.sampling.seed,
            "phase 1: answers to filter" if r.label_filter.enabled else "phase 1: prefixes",
            counter="prefix",
            derived=("choice",),
            make_messages=prompts.prefix_messages(),
            on_shard=workers.arrived,
        )
        workers.finish()
    _phase_timing(b, "prefix_phase", started, loaded_before)
    b.timings["vote"] = workers.choose_s


def _full_phase(b: _Build, full: Shards, prompts: _Prompts) -> list[Shards]:
    """Phase 2: a full trace per question of the share, cut-off traces sampled again."""
    r = b.recipe
    from_prefix = r.mixture.full_trace_from == "prefix"
    # Continued traces keep the whole trace (prefix + continuation) within max_tokens.
    budget = (
        max(1, r.sampling.max_tokens - r.prefix.length) if from_prefix else r.sampling.max_tokens
    )
    started, loaded_before = time.monotonic(), b.executor.engine_load_s
    tries = sample_full_traces(
        b.runner,
        full,
        prompts.full_shard,
        budget,
        r.sampling.seed,
        r.mixture.full_trace_tries,
        prompts.full_messages(),
    )
    _phase_timing(b, "full_phase", started, loaded_before)
    return tries


def _provenance(b: _Build, found: Collected, fp: str) -> Provenance:
    engine = b.executor.engine_info()
    model = ModelInfo(
        id=b.recipe.model.id,
        revision=b.model.revision,
        name=b.model.display_name,
        engine=EngineInfo.model_validate(engine) if engine else None,
    )
    sources = [SourceInfo.model_validate(e) for e in found.manifest_entries()]
    gold = GoldAnswers.model_validate(b.gold.as_dict()) if b.gold is not None else None
    return Provenance(fp, sources, model, b.decoding_sources, gold)


def _run_record(b: _Build) -> RunRecord:
    if b.executor.engine_load_s:
        b.timings["engine_load"] = b.executor.engine_load_s
    return RunRecord(
        Timings.model_validate({k: round(v, 2) for k, v in b.timings.items()}),
        Resume.model_validate(b.runner.resume),
        ExecutorInfo.model_validate(b.executor.describe()),
    )
