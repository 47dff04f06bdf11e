"""The build: recipe -> questions -> phase 1 (prefixes) -> vote -> phase 2 (full traces) -> files.

This module only orchestrates; each step lives in its own module. It owns the rules that span
steps: the fingerprint check against an existing version directory (same fingerprint: nothing
to do, no engine is loaded; different: refuse unless ``force``), resuming from persisted
shards, loading the engine only when something is left to sample, and the token accounting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder import voting
from builder.errors import OutputError, SamplingError
from builder.manifest import (
    RFT_SAMPLES_PER_QUESTION,
    agreement_summary,
    build_manifest,
    fingerprint,
    token_accounting,
)
from builder.mixture import (
    Phase1,
    PrefixChoice,
    assemble,
    first_correct,
    full_trace_ids,
    generated_tokens,
    gold_answers,
)
from builder.models import ResolvedModel, resolve_model
from builder.progress import phase_progress
from builder.prompts import (
    echo_share,
    encode_prompt,
    instruction_markers,
    messages,
    stable_prefix,
)
from builder.recipe import Recipe
from builder.sampling.base import Sample, Sampler, SamplingSettings, make_sampler
from builder.sources import LoadedSource, Question, load_questions
from builder.store import ShardStore
from builder.writer import (
    publish_dir,
    read_existing_fingerprint,
    write_card,
    write_config,
    write_json,
)

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What a build did: ``built`` a new version directory, or found it ``unchanged``."""

    path: Path
    status: str
    manifest: dict[str, Any]
    engine_calls: int = 0


@dataclass
class _Run:
    """Mutable state of one build: the lazily loaded engine and counters."""

    recipe: Recipe
    model: ResolvedModel
    settings: SamplingSettings
    quiet: bool
    sampler: Sampler | None = None
    owns_sampler: bool = False
    tokenizer: Any = None
    engine_calls: int = 0
    decoding_sources: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    resume: dict[str, int] = field(default_factory=lambda: {
        "prefix_shards_reused": 0, "prefix_shards_sampled": 0,
        "full_shards_reused": 0, "full_shards_sampled": 0,
    })

    def engine(self) -> Sampler:
        if self.sampler is None:
            started = time.monotonic()
            m = self.recipe.model
            logger.info("loading %s with %s", self.model.display_name, m.backend)
            self.sampler = make_sampler(
                m.backend, self.model.path, self.model.revision, self.settings,
                m.engine_options(), m.chat_template,
            )
            self.owns_sampler = True
            self.timings["engine_load"] = time.monotonic() - started
        return self.sampler

    def get_tokenizer(self) -> Any:
        if self.sampler is not None:
            return self.sampler.tokenizer
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            rev = {"revision": self.model.revision} if self.recipe.model.revision else {}
            self.tokenizer = AutoTokenizer.from_pretrained(self.model.path, **rev)
            if self.recipe.model.chat_template is not None:
                self.tokenizer.chat_template = self.recipe.model.chat_template
        return self.tokenizer

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 progress: Callable[[int, int], None]) -> list[list[Sample]]:
        self.engine_calls += 1
        return self.engine().generate(prompts, n, max_tokens, progress)


# The engines' neutral values: what a field means when neither recipe nor model sets it.
NEUTRAL_DECODING: dict[str, float | int] = {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def _generation_defaults(model: ResolvedModel) -> dict[str, Any]:
    """Decoding defaults from the model's generation config (the paper's rule), if readable."""
    path = Path(model.path) / "generation_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model.path, "generation_config.json",
                                        revision=model.revision))
        except Exception:  # offline, gated or absent: fall back to neutral values
            logger.warning("no generation_config.json for %s; decoding with neutral defaults "
                           "(top_p=1.0, top_k disabled, no repetition penalty)", model.path)
            return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def decoding_sources(recipe: Recipe, gen: dict[str, Any]) -> dict[str, str]:
    """Where each resolvable decoding value comes from: recipe, generation_config or neutral."""
    s = recipe.sampling
    out = {}
    for name in NEUTRAL_DECODING:
        if getattr(s, name) is not None:
            out[name] = "recipe"
        elif gen.get(name) is not None:
            out[name] = "generation_config"
        else:
            out[name] = "neutral"
    return out


def resolve(recipe: Recipe, model: ResolvedModel, gen: dict[str, Any] | None = None) -> Recipe:
    """Fill what the recipe left to the model's generation config, else the neutral value.

    Both backends then apply exactly these values (the resolved recipe is what is written out),
    so a Qwen-Math ``repetition_penalty: 1.05`` applies to vLLM and transformers alike.
    """
    gen = _generation_defaults(model) if gen is None else gen
    s = recipe.sampling
    update: dict[str, Any] = {}
    for name, neutral in NEUTRAL_DECODING.items():
        value = getattr(s, name)
        if value is None:
            found = gen.get(name)
            value = type(neutral)(found) if found is not None else neutral
        update[name] = value
    return recipe.model_copy(update={"sampling": s.model_copy(update=update)})


def plan(recipe: Recipe, base_dir: Path | None) -> dict[str, Any]:
    """What a build would sample, without loading a model (``--dry-run``)."""
    loaded = load_questions(recipe.source, base_dir)
    q = len(loaded.questions)
    lf = recipe.label_filter.enabled
    n_full = 0 if lf else int(round(recipe.mixture.full_trace_ratio * q))
    per_q, first_max = recipe.sampled_per_question, recipe.phase1_max_tokens
    prefix_bound = q * per_q * first_max
    # Every try of a full trace may run to max_tokens: the bound counts them all.
    full_bound = n_full * recipe.mixture.full_trace_tries * recipe.sampling.max_tokens
    rft_bound = RFT_SAMPLES_PER_QUESTION * q * recipe.sampling.max_tokens
    return {
        "output": str(Path(recipe.output.dir) / recipe.name / recipe.version),
        "source": loaded.manifest_entry(),
        "questions": q,
        "prefix_phase": {"prompts": q, "samples": q * per_q, "max_tokens_each": first_max,
                         "token_bound": prefix_bound,
                         "prompt": "plain" if lf else recipe.prefix.sample_prompt},
        "full_phase": {"prompts": n_full, "samples": n_full, "max_tokens_each":
                       recipe.sampling.max_tokens, "max_tries": recipe.mixture.full_trace_tries,
                       "token_bound": full_bound},
        "token_bound": prefix_bound + full_bound,
        "rft_token_bound": rft_bound,
        "bound_ratio_vs_rft": (
            round((prefix_bound + full_bound) / rft_bound, 4) if rft_bound else None
        ),
    }


def _shards(items: list[Question], size: int) -> list[list[Question]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _sample_phase(run: _Run, store: ShardStore, phase: str, shards: list[list[Question]],
                  make_prompts: Callable[[list[Question]], list[list[int]]], n: int,
                  max_tokens: int, label: str, counter: str | None = None,
                  ) -> dict[str, list[Sample]]:
    """Sample every shard not already persisted; persist each as soon as it is done."""
    counter = counter or phase
    out: dict[str, list[Sample]] = {}
    total = sum(len(s) for s in shards)
    if not all(store.has(phase, index) for index in range(len(shards))):
        run.engine()  # load before the bar starts, so its rate and ETA count sampling only
    with phase_progress(label, total, enabled=not run.quiet) as advance:
        for index, shard in enumerate(shards):
            if store.has(phase, index):
                loaded = store.load(phase, index)
                run.resume[f"{counter}_shards_reused"] += 1
                advance(len(shard), 0)
                results = [loaded[q.id] for q in shard]
            else:
                results = run.generate(make_prompts(shard), n, max_tokens, advance)
                store.save(phase, index, [q.id for q in shard], results)
                run.resume[f"{counter}_shards_sampled"] += 1
            out.update({q.id: r for q, r in zip(shard, results, strict=True)})
    return out


def _vote(run: _Run, questions: list[Question], phase1: dict[str, list[Sample]],
          chosen: dict[str, int | None] | None = None) -> dict[str, PrefixChoice]:
    p = run.recipe.prefix
    tokens = voting.pack([[s.token_ids for s in phase1[q.id]] for q in questions], p.length)
    logprobs = np.array([[np.nan if s.cumulative_logprob is None else s.cumulative_logprob
                          for s in phase1[q.id]] for q in questions], dtype=np.float64)
    picks = None
    if chosen is not None:
        picks = np.array([chosen.get(q.id) or 0 for q in questions], dtype=np.int64)
    n_samples = tokens.shape[1]
    result = voting.vote(tokens, logprobs, p.vote, p.min_agreement, chosen=picks)
    tok = run.get_tokenizer()
    raws = [result.prefix_ids(i) for i in range(len(questions))]
    # One batched decode + encode settles almost every prefix; only the rest take the
    # token-by-token path of stable_prefix.
    texts = tok.batch_decode(raws, skip_special_tokens=False)
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    curves = result.curves.tolist()
    choices: dict[str, PrefixChoice] = {}
    trimmed = 0
    for i, q in enumerate(questions):
        raw, text = raws[i], texts[i]
        if list(encoded[i]) == raw and text == text.rstrip():
            ids = raw
        else:
            ids, text = stable_prefix(tok, raw)
        if len(ids) < len(raw):
            trimmed += 1
            voting.truncate(result, i, len(ids))
        choices[q.id] = PrefixChoice(ids, text, int(result.support[i]), n_samples,
                                     curves[i], bool(result.complete[i]))
    if trimmed:
        logger.info("%d prefix(es) shortened to a token-exact, trimmed text boundary", trimmed)
    return choices


def build(
    recipe: Recipe,
    base_dir: Path | None = None,
    *,
    force: bool = False,
    quiet: bool = False,
    sampler: Sampler | None = None,
) -> BuildResult:
    """Run the whole build; returns the version directory (new or already complete)."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    loaded: LoadedSource = load_questions(recipe.source, base_dir)
    timings["source"] = time.monotonic() - t0

    model = resolve_model(recipe.model.id, recipe.model.revision)
    gen = _generation_defaults(model)
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
            manifest = json.loads((final / "manifest.json").read_text())
            return BuildResult(final, "unchanged", manifest)
        raise OutputError(
            f"{final} already exists and was built from a different recipe, source or model "
            f"(fingerprint {str(existing)[:12]} vs {fp[:12]}); bump `version` in the recipe to "
            "build a new version, or pass --force to replace it"
        )

    settings = recipe.sampling.settings()
    run = _Run(recipe, model, settings, quiet, timings=timings, decoding_sources=sources)
    if sampler is not None:
        if sampler.settings.seed != settings.seed:
            logger.warning("the engine was created with seed %d, the recipe asks for %d",
                           sampler.settings.seed, settings.seed)
        sampler.settings = settings
        run.sampler = sampler
    store = ShardStore(staging, fp, fresh=force)
    try:
        return _build(run, loaded, store, final, fp, replace=final.exists(), t0=t0)
    finally:
        if run.owns_sampler and run.sampler is not None:
            run.sampler.close()


def _try_seed(seed: int, attempt: int) -> int:
    """The sampling seed of a full trace's ``attempt``-th try (the first keeps the recipe's)."""
    if attempt == 1:
        return seed
    digest = hashlib.sha256(f"{seed}:full-trace-try:{attempt}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _sample_full_traces(run: _Run, store: ShardStore, full_qs: list[Question],
                        make_prompts: Callable[[list[Question]], list[list[int]]],
                        budget: int) -> dict[str, list[Sample]]:
    """One trace per question; traces cut off by ``max_tokens`` are sampled again, up to
    ``mixture.full_trace_tries`` times in all. Returns every try, in order, per question.

    Each try is its own persisted phase (``full``, ``full-2``, ...) with its own seed, and the
    questions of try k are those whose try k-1 did not end: both follow from what is stored,
    so an interrupted build resumes into the same tries.
    """
    r = run.recipe
    tries: dict[str, list[Sample]] = {q.id: [] for q in full_qs}
    pending = full_qs
    base = run.settings
    for attempt in range(1, r.mixture.full_trace_tries + 1):
        if not pending:
            break
        run.settings = dataclasses.replace(base, seed=_try_seed(base.seed, attempt))
        if run.sampler is not None:
            run.sampler.settings = run.settings
        phase = "full" if attempt == 1 else f"full-{attempt}"
        label = "phase 2: full traces" + ("" if attempt == 1 else f" (try {attempt})")
        got = _sample_phase(run, store, phase, _shards(pending, r.output.shard_size),
                            make_prompts, 1, budget, label, counter="full")
        for q in pending:
            tries[q.id].append(got[q.id][0])
        pending = [q for q in pending if got[q.id][0].finish_reason != "stop"]
    run.settings = base
    if run.sampler is not None:
        run.sampler.settings = base
    if pending:
        logger.info("%d full trace(s) never ended within max_tokens=%d in %d tries; those "
                    "questions get prefix rows", len(pending), budget, r.mixture.full_trace_tries)
    return tries


def _echo(run: _Run, phase1: dict[str, list[Sample]],
          phase2: dict[str, list[Sample]]) -> dict[str, Any]:
    """How often the first L tokens of samples repeat the instruction's wording, per phase."""
    r = run.recipe
    markers = instruction_markers(r.prefix.instruction)
    tok = run.get_tokenizer()
    length = r.prefix.length

    def share(groups: dict[str, list[Sample]]) -> float | None:
        heads = [s.token_ids[:length] for samples in groups.values() for s in samples]
        if not heads:
            return None
        value = echo_share(tok.batch_decode(heads, skip_special_tokens=True), markers)
        return None if value is None else round(value, 4)

    return {
        "sample_prompt": "plain" if r.label_filter.enabled else r.prefix.sample_prompt,
        "markers": markers,
        "measured_on": f"first {length} tokens",
        "prefix_samples": share(phase1),
        "full_traces": share(phase2),
    }


def _build(run: _Run, loaded: LoadedSource, store: ShardStore, final: Path, fp: str,
           replace: bool, t0: float) -> BuildResult:
    r = run.recipe
    questions = loaded.questions
    system, instruction = r.model.system_prompt, r.prefix.instruction
    lf = r.label_filter.enabled
    # The paper samples prefixes with the plain question and cuts; the instruction belongs to
    # the training prompt only (sampling under it makes answers echo its wording).
    sample_instruction = instruction if (r.prefix.sample_prompt == "instruction" and not lf) \
        else None

    def prefix_prompts(shard: list[Question]) -> list[list[int]]:
        tok = run.get_tokenizer()
        return [encode_prompt(tok, messages(q.text, sample_instruction, system)) for q in shard]

    started, loaded_before = time.monotonic(), run.timings.get("engine_load", 0.0)
    label = "phase 1: answers to filter" if lf else "phase 1: prefixes"
    phase1 = _sample_phase(run, store, "prefix", _shards(questions, r.output.shard_size),
                           prefix_prompts, r.sampled_per_question, r.phase1_max_tokens, label)
    # The engine loads lazily inside the first phase that samples; report it on its own.
    engine_load = run.timings.get("engine_load", 0.0) - loaded_before
    run.timings["prefix_phase"] = time.monotonic() - started - engine_load

    started = time.monotonic()
    filtered: Phase1 | None = None
    if lf:
        filtered = Phase1()
        for q in questions:
            pick, verdicts = first_correct(gold_answers(q), phase1[q.id])
            filtered.chosen[q.id], filtered.verdicts[q.id] = pick, verdicts
    choices = _vote(run, questions, phase1, filtered.chosen if filtered else None)
    run.timings["vote"] = time.monotonic() - started

    full_ids = full_trace_ids([q.id for q in questions], r.mixture.full_trace_ratio, r.mixture.seed)
    full_qs = [] if lf else [q for q in questions if q.id in full_ids]
    from_prefix = r.mixture.full_trace_from == "prefix"
    # Continued traces keep the whole trace (prefix + continuation) within max_tokens.
    budget = r.sampling.max_tokens
    if from_prefix:
        budget = max(1, budget - r.prefix.length)

    def full_prompts(shard: list[Question]) -> list[list[int]]:
        tok = run.get_tokenizer()
        out = []
        for q in shard:
            ids = encode_prompt(tok, messages(q.text, None, system))
            out.append(ids + choices[q.id].ids if from_prefix else ids)
        return out

    started, loaded_before = time.monotonic(), run.timings.get("engine_load", 0.0)
    phase2 = _sample_full_traces(run, store, full_qs, full_prompts, budget)
    engine_load = run.timings.get("engine_load", 0.0) - loaded_before
    run.timings["full_phase"] = time.monotonic() - started - engine_load

    prefix_cost = sum(generated_tokens(x) for samples in phase1.values() for x in samples)
    full_cost = sum(generated_tokens(x) for samples in phase2.values() for x in samples)
    if from_prefix:
        tok = run.get_tokenizer()
        # The trace is the voted prefix followed by what the engine continued it with.
        phase2 = {
            qid: [Sample(choices[qid].ids + x.token_ids,
                         tok.decode(choices[qid].ids + x.token_ids, skip_special_tokens=True),
                         x.finish_reason, x.cumulative_logprob) for x in samples]
            for qid, samples in phase2.items()
        }
    # Complete answers sampled: the full traces, or with the label filter every phase-1 answer.
    complete = [x for samples in (phase1 if lf else phase2).values() for x in samples]
    mean_full = (sum(generated_tokens(x) for x in complete) / len(complete)) if complete else None
    echo = _echo(run, phase1, phase2)

    started = time.monotonic()
    tables = assemble(r, questions, choices, phase1, phase2, filtered)
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
        "full_trace_resampled": tables.stats["full_trace_resampled"],
        "full_trace_fallback": tables.stats["full_trace_fallback"],
        "label_filter_dropped": tables.stats["label_filter_dropped"],
        "label_filter_unfiltered": tables.stats["label_filter_unfiltered"],
    }
    curves = np.array(tables.prefixes["agreement_curve"], dtype=np.float64)
    manifest_model: dict[str, Any] = {"id": r.model.id, "revision": run.model.revision,
                                      "name": run.model.display_name}
    if run.sampler is not None:
        manifest_model["engine"] = run.sampler.engine_info()
    release = store.staging / "release"
    shutil.rmtree(release, ignore_errors=True)
    release.mkdir(parents=True)
    for config, cols in (("mixture", tables.mixture), ("prefixes", tables.prefixes),
                         ("traces", tables.traces)):
        write_config(release, config, cols)
    recipe_yaml = r.to_yaml()
    (release / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    run.timings["write"] = time.monotonic() - started
    run.timings["total"] = time.monotonic() - t0
    manifest = build_manifest(
        r, fp, loaded.manifest_entry(), manifest_model, counts,
        token_accounting(prefix_cost, full_cost, mean_full, len(questions),
                         tables.stats["tuning_tokens"]),
        agreement_summary(curves, tables.prefixes["agreement"], tables.prefixes["prefix_tokens"]),
        tables.stats["accuracy"], run.timings, run.resume, echo, run.decoding_sources,
    )
    write_json(release / "manifest.json", manifest)
    write_card(release, manifest, recipe_yaml, tables.prefixes["agreement_curve"],
               tables.prefixes["agreement"])
    publish_dir(release, final, replace=replace)
    store.remove()
    logger.info("wrote %s", final)
    return BuildResult(final, "built", manifest, run.engine_calls)
