"""The evaluation run: questions -> prompts -> generation shard by shard -> scored rows -> files.

Middle stage of ``upft-eval``. Questions come from the builder's source stage
(``builder.sources.load_questions``); prompts are the builder's (``builder.prompts``: the model's
chat template, an optional system prompt, the plain question); generation goes through the
builder's executors and sampler module (vLLM by default, transformers as fallback). Per shard of
questions the run asks for two generations, each a ``builder.executor.ShardRequest`` of its own
phase: the answers (plain prompt, the eval's decoding) and, when the prefix check is on, one
greedy answer of at most L + slack tokens under the prefix instruction. When both are back it
scores them and persists the shard's rows at once in the builder's shard store
(``builder.store.ShardStore`` in ``<output>/.shards/``: checksummed shards, and a lock that keeps
a second eval out of the folder), so an interrupted eval resumes where it stopped. Gold answers
are the source stage's (``Question.answers``, read by ``builder.gold``); those that match
nothing are counted (``builder.answers.audit``) into summary.json.

``executor.kind: local`` (the default) runs the requests one after another on one engine in
this process; ``kind: ray`` hands them to ``builder.ray_executor.RayExecutor``'s engine replicas,
which take shards as they become free. A request's output depends only on the request (the
engines reseed from the seed and its prompts), so both give the same rows, and an eval started
on one resumes on the other. The output is identified by a fingerprint of everything that
changes it (model weights, questions, settings; not the executor): a finished eval with the same
fingerprint is reported again without loading any model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import answers
from builder.answers import GoldAudit
from builder.errors import EvalError, SourceError
from builder.executor import Chat, Executor, LocalExecutor, ShardDone, ShardRequest
from builder.hashing import sha256_file
from builder.models import EMBEDDED_PREFIX, ResolvedModel, cache_dir, load_tokenizer, resolve_model
from builder.progress import phase_progress
from builder.prompts import encode_prompt, messages
from builder.ray_executor import require_ray
from builder.recipe import SourceConfig
from builder.sampling import make_sampler
from builder.sampling.base import ProgressFn, Sample, Sampler, SamplingSettings
from builder.served import (
    chat_of,
    make_eval_executor,
    served_identity,
    wants_messages,
    without_served,
)
from builder.sources import LoadedSource, Question, load_questions
from builder.store import ShardStore
from upft.evaluation import benchmarks, report, scoring
from upft.evaluation.config import EvalConfig

logger = logging.getLogger(__name__)

EVAL_FORMAT = 2  # bump when the rows or the fingerprint change meaning (2: gold-answer rules)
OUTPUT_NAMES = {
    "results.jsonl",
    "summary.json",
    "README.md",
    "eval_config.yaml",
    ".shards",
    ".shards.lock",
    "eval.log",
}
# Files that hold a model's weights and behaviour (not its card or eval outputs).
_MODEL_FILES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken")
_SKIP_MODEL_FILES = {"train_summary.json", "trainer_state.json"}


@dataclass
class EvalRun:
    """What ``evaluate`` did: ``evaluated`` (some shards sampled) or found it ``unchanged``."""

    path: Path
    status: str
    summary: dict[str, Any]
    engine_loads: int = 0


@dataclass
class EvalQuestion:
    """A question with its acceptable gold answers (strings math-verify parses)."""

    question: Question
    golds: tuple[str, ...]


# --- inputs ----------------------------------------------------------------------------------


def source_for(cfg: EvalConfig) -> tuple[SourceConfig, dict[str, Any]]:
    """The builder source config for the eval's data section, plus what names the data."""
    d = cfg.data
    common: dict[str, Any] = {
        "limit": d.limit,
        "shuffle": d.shuffle,
        "seed": d.seed,
        "answer_pattern": d.answer_pattern,
    }
    if d.benchmark is not None:
        bench = benchmarks.get(d.benchmark)
        path = benchmarks.local_file(bench) if d.prefer != "hub" else None
        if d.prefer == "local" and path is None:
            raise SourceError(
                f"benchmark {bench.name!r}: {bench.file} is not in the shared data folder "
                f"{benchmarks.shared_data_dir()}; set UPFT_SHARED_DATA or use prefer: hub"
            )
        fields = bench.local if path is not None else bench.hub_fields
        names: dict[str, Any] = {
            "question": d.question or fields.question,
            "answer": d.answer or fields.answer,
            "id": d.id if d.id is not None else fields.id,
        }
        meta = {
            "benchmark": bench.name,
            "title": bench.title,
            "dataset_type": bench.hub,
            "answer_format": bench.answer_format,
        }
        if path is not None:
            src = SourceConfig(path=str(path), **names, **common)
            meta["split"] = "test"
        else:
            split = d.split or bench.hub_split
            src = SourceConfig(
                hub=bench.hub,
                config=bench.hub_config,
                split=split,
                revision=d.revision,
                **names,
                **common,
            )
            meta["split"] = split
        return src, meta
    names = {"question": d.question or "question", "answer": d.answer, "id": d.id}
    if d.path is not None:
        path = Path(d.path).expanduser()
        src = SourceConfig(path=str(path), **names, **common)
        return src, {
            "benchmark": None,
            "title": path.stem,
            "dataset_type": path.name,
            "split": d.split or "test",
            "answer_format": "auto",
        }
    assert d.hub is not None
    split = d.split or "test"
    src = SourceConfig(
        hub=d.hub, config=d.config, split=split, revision=d.revision, **names, **common
    )
    return src, {
        "benchmark": None,
        "title": d.hub,
        "dataset_type": d.hub,
        "split": split,
        "answer_format": "auto",
    }


def load(cfg: EvalConfig) -> tuple[list[EvalQuestion], LoadedSource, dict[str, Any], GoldAudit]:
    """The eval's questions with their gold answers, and the count of gold answers that match
    nothing (warned about here, recorded in summary.json)."""
    src, meta = source_for(cfg)
    loaded = load_questions(src, None)
    out = []
    for q in loaded.questions:
        if q.answer is None:
            raise SourceError(
                f"question {q.id!r} has no gold answer (field {src.answer!r} is empty or null); "
                "an eval needs one per question: fix the data or pick another --answer field"
            )
        out.append(EvalQuestion(q, q.answers))
    gold = answers.audit(
        ((q.id, q.answer, q.answers) for q in loaded.questions), src.answer, src.answer_pattern
    )
    gold.warn()
    return out, loaded, meta, gold


def folder_hash(folder: Path) -> str:
    """sha256 over the weight, config and tokenizer files of a model folder (cached by mtime)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in _MODEL_FILES
        and p.name not in _SKIP_MODEL_FILES
        and not any(
            part.startswith(".") or part in ("eval", "evals")
            for part in p.relative_to(folder).parts[:-1]
        )
        and p.name != "README.md"
    )
    cache_path = cache_dir() / "file-hashes.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    digest = hashlib.sha256()
    changed = False
    for path in files:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(path)
            changed = True
        digest.update(f"{path.relative_to(folder).as_posix()}\0{cache[key]}\n".encode())
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_path)
        except OSError:  # a read-only cache only costs re-hashing next time
            pass
    return digest.hexdigest()


def model_identity(model: ResolvedModel) -> dict[str, Any]:
    """What identifies the evaluated weights: Hub commit, embedded revision or folder hash."""
    ident: dict[str, Any] = {
        "spec": model.spec,
        "name": model.display_name,
        "path": model.path,
        "revision": model.revision,
        "commit": None,
        "folder_sha256": None,
    }
    if Path(model.path).is_dir():
        ident["folder_sha256"] = folder_hash(Path(model.path))
        return ident
    try:
        from huggingface_hub import HfApi

        ident["commit"] = HfApi().model_info(model.path, revision=model.revision).sha
    except Exception as exc:  # offline or gated: the requested revision is all we know
        logger.warning(
            "could not resolve the Hub commit of %s (%s); recording the requested revision only",
            model.path,
            type(exc).__name__,
        )
    return ident


def fingerprint(
    cfg: EvalConfig, model: dict[str, Any], data: dict[str, Any], questions: list[EvalQuestion]
) -> str:
    """sha256 over everything that changes an eval's rows."""
    settings = cfg.model_dump(mode="json")
    for key in ("output", "card", "base", "shard_size", "executor"):
        settings.pop(key)
    settings["data"] = {k: v for k, v in settings["data"].items() if k != "path"}
    for key in (
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "cpu_kvcache_gib",
        "id",
        "compile",
    ):
        settings["model"].pop(key)
    # Where a served model is reached does not change its answers.
    settings["model"] = without_served(settings["model"], cfg.model.backend)
    payload = {
        "format": EVAL_FORMAT,
        "settings": settings,
        "model": {k: model[k] for k in ("revision", "commit", "folder_sha256")},
        "model_spec": model["spec"] if not model["folder_sha256"] else None,
        "data": {k: data.get(k) for k in ("type", "id", "config", "split", "revision", "sha256")},
        "questions": [[e.question.id, e.question.text, list(e.golds)] for e in questions],
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


# --- the executor and the shards -------------------------------------------------------------

ANSWERS, PREFIX = "answers", "prefix_check"  # the phases of a shard's generation requests


class _PhaseExecutor(LocalExecutor):
    """The builder's local executor, with each phase's own decoding (sampled answers, greedy
    prefix check); a Ray replica does the same from ``ReplicaSpec.phase_settings``."""

    def __init__(self, phases: dict[str, SamplingSettings], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phases = phases

    def run(self, requests: Iterable[ShardRequest], done: ShardDone, progress: ProgressFn) -> None:
        sampler = self.engine()
        for req in requests:
            sampler.settings = self.phases[req.phase]  # LocalExecutor sets the request's seed
            super().run((req,), done, progress)


def make_executor(
    cfg: EvalConfig, model: ResolvedModel, token_bound: int | None, sampler: Sampler | None = None
) -> Executor:
    """The executor of ``cfg.executor`` (``sampler``: run everything on that engine, locally)."""
    gen, m = cfg.generation, cfg.model
    phases = {ANSWERS: gen.settings(), PREFIX: gen.greedy()}
    if sampler is not None:
        return _PhaseExecutor(phases, sampler=sampler)
    if m.backend == "openai":
        return make_eval_executor(m, model, phases)
    if cfg.executor.kind == "ray":
        from builder.ray_executor import RayExecutor

        # An embedded model converts on each node; a folder travels as its absolute path.
        where = model.spec if model.spec.startswith(EMBEDDED_PREFIX) else model.path
        return RayExecutor.from_sections(
            cfg.executor,
            m,
            phases[ANSWERS],
            token_bound,
            model_id=where,
            phase_settings=tuple(phases.items()),
        )

    def factory() -> Sampler:
        logger.info("loading %s with %s", model.display_name, m.backend)
        return make_sampler(
            m.backend,
            model.path,
            model.revision,
            phases[ANSWERS],
            m.engine_options(token_bound),
            m.chat_template,
        )

    return _PhaseExecutor(phases, factory=factory)


def _tokenizer(cfg: EvalConfig, model: ResolvedModel, executor: Executor) -> Any:
    """The engine's tokenizer when it runs here, else the model's own (engines on replicas)."""
    if executor.tokenizer is not None:
        return executor.tokenizer
    return load_tokenizer(model, bool(cfg.model.revision), cfg.model.chat_template)


ROWS = "rows"  # the store phase of a shard's scored rows


def open_store(out: Path, fp: str) -> ShardStore:
    """The builder's shard store in ``<output>/.shards`` (checksummed shards, tied to ``fp``),
    holding ``<output>/.shards.lock``: one eval writes an output folder at a time."""
    return ShardStore(out / ".shards", fp, command="upft-eval", task="writing this output folder")


def save_rows(store: ShardStore, index: int, rows: list[dict[str, Any]]) -> None:
    """Persist one scored shard: its rows as JSON text, one per parquet row."""
    import polars as pl

    texts = [json.dumps(r, ensure_ascii=False) for r in rows]
    store.save_frame(ROWS, index, pl.DataFrame({"row": texts}, schema={"row": pl.String}))


def load_rows(store: ShardStore, index: int, ids: list[str]) -> list[dict[str, Any]] | None:
    """The shard's rows, or None when it is missing, damaged (discarded by the store's
    checksum) or holds other questions (the shard size changed since it was written)."""
    if not store.has(ROWS, index):
        return None
    rows = [json.loads(text) for text in store.load_frame(ROWS, index)["row"].to_list()]
    if [r["id"] for r in rows] != ids:
        store.discard(ROWS, index)
        return None
    return rows


def _prompt(
    tokenizer: Any, question: str, instruction: str | None, system: str | None
) -> tuple[str, list[int]]:
    msgs = messages(question, instruction, system)
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return str(text), encode_prompt(tokenizer, msgs)


@dataclass
class _OpenShard:
    """A shard whose generations are under way: its questions, prompt texts, outputs so far."""

    questions: list[EvalQuestion]
    prompts: list[str]
    outputs: dict[str, Sequence[list[Sample]]] = field(default_factory=dict)


def _requests(
    cfg: EvalConfig,
    tok: Any,
    parts: list[list[EvalQuestion]],
    pending: list[int],
    open_shards: dict[int, _OpenShard],
) -> Iterator[ShardRequest]:
    """The generation requests of the pending shards, templated as the executor asks for them."""
    gen, pc, system = cfg.generation, cfg.prefix_check, cfg.model.system_prompt
    for index in pending:
        part = parts[index]
        ids = tuple(e.question.id for e in part)
        plain = [_prompt(tok, e.question.text, None, system) for e in part]
        open_shards[index] = _OpenShard(part, [text for text, _ in plain])
        prompts = tuple(tuple(p) for _, p in plain)
        chats = _chats(cfg, part, None)
        yield ShardRequest(ANSWERS, index, ids, prompts, gen.n, gen.max_tokens, gen.seed, chats)
        if pc.enabled:
            prompts = tuple(
                tuple(_prompt(tok, e.question.text, pc.instruction, system)[1]) for e in part
            )
            chats = _chats(cfg, part, pc.instruction)
            yield ShardRequest(
                PREFIX, index, ids, prompts, 1, pc.length + pc.slack, gen.seed, chats
            )


def _chats(
    cfg: EvalConfig, part: list[EvalQuestion], instruction: str | None
) -> tuple[Chat, ...] | None:
    """The prompts as chat messages, for a served model's chat endpoint (else None)."""
    if not wants_messages(cfg.model):
        return None
    system = cfg.model.system_prompt
    return tuple(chat_of(messages(e.question.text, instruction, system)) for e in part)


def _score_shard(cfg: EvalConfig, shard: _OpenShard) -> list[dict[str, Any]]:
    """Score one generated shard: the rows it contributes to results.jsonl."""
    outputs, prefix_out = shard.outputs[ANSWERS], shard.outputs.get(PREFIX)
    rows = []
    for i, e in enumerate(shard.questions):
        scored = [scoring.score_sample(e.golds, s, cfg.scoring_timeout_s) for s in outputs[i]]
        row: dict[str, Any] = {
            "id": e.question.id,
            "question": e.question.text,
            "gold": list(e.golds),
            "prompt": shard.prompts[i],
            **scored[0],
            "n": len(scored),
            "n_correct": sum(s["correct"] for s in scored),
        }
        if len(scored) > 1:
            row["samples"] = scored[1:]
        if prefix_out is not None:
            p = prefix_out[i][0]
            row["prefix"] = {
                "completion": p.text,
                "tokens": len(p.token_ids),
                "finish_reason": p.finish_reason,
            }
        rows.append(row)
    return rows


def _generate(
    cfg: EvalConfig,
    executor: Executor,
    tok: Any,
    parts: list[list[EvalQuestion]],
    pending: list[int],
    store: ShardStore,
    advance: ProgressFn,
    timings: dict[str, float],
) -> dict[int, list[dict[str, Any]]]:
    """Generate, score and persist the pending shards; their rows by shard index."""
    phases = 2 if cfg.prefix_check.enabled else 1
    open_shards: dict[int, _OpenShard] = {}
    finished: dict[int, list[dict[str, Any]]] = {}
    in_done = 0.0  # driver time spent scoring and saving, not generating

    def done(req: ShardRequest, results: Sequence[list[Sample]]) -> None:
        nonlocal in_done
        started = time.monotonic()
        shard = open_shards[req.index]
        shard.outputs[req.phase] = results
        tokens = sum(len(s.token_ids) for samples in results for s in samples)
        timings["generated_tokens"] = timings.get("generated_tokens", 0) + tokens
        if len(shard.outputs) == phases:
            del open_shards[req.index]
            rows = _score_shard(cfg, shard)
            save_rows(store, req.index, rows)
            finished[req.index] = rows
            timings["generated_questions"] = timings.get("generated_questions", 0) + len(rows)
            advance(len(rows), 0)  # questions count when scored; tokens as they come
        in_done += time.monotonic() - started

    started = time.monotonic()
    executor.run(
        _requests(cfg, tok, parts, pending, open_shards), done, lambda _q, t: advance(0, t)
    )
    timings["generate"] = time.monotonic() - started - in_done
    timings["scoring"] = in_done
    return finished


# --- the run ---------------------------------------------------------------------------------


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvalError(f"output {str(out)!r} is a file; pass a folder with --output")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
        if foreign:
            names = ", ".join(foreign[:5])
            raise EvalError(
                f"output folder {str(out)!r} holds files an eval does not write ({names}); "
                "choose an empty or new folder for --output"
            )


def read_summary(out: Path) -> dict[str, Any] | None:
    path = out / "summary.json"
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError:
        return None


def evaluate(
    cfg: EvalConfig,
    *,
    force: bool = False,
    quiet: bool = False,
    sampler: Sampler | None = None,
    executor: Executor | None = None,
    replace_other: bool = False,
    process_exiting: bool = False,
) -> EvalRun:
    """Run (or resume, or find finished) the eval that ``cfg`` describes.

    A finished eval with another fingerprint in ``cfg.output`` is refused, unless ``force``
    (always re-run) or ``replace_other`` (re-run only then: ``upft-train --eval --overwrite``).
    ``sampler`` runs every shard on an engine the caller owns (tests); ``executor`` hands the
    shards to that executor instead of the one ``cfg.executor`` describes (closed here).
    ``process_exiting``: the process ends right after (the console script), so an in-process
    engine loaded here is left to the exit instead of being shut down.
    """
    if not cfg.output:
        raise EvalError("no output folder given; pass --output DIR (or set 'output:' in the file)")
    t0 = time.monotonic()
    out = Path(cfg.output).expanduser()
    _check_output(out)
    questions, loaded, meta, gold = load(cfg)
    if cfg.model.backend == "openai":
        model, ident = served_identity(cfg.model)
    else:
        model = resolve_model(cfg.model.id, cfg.model.revision)
        ident = model_identity(model)
    data = {**loaded.manifest_entry(), **meta}
    fp = fingerprint(cfg, ident, data, questions)

    existing = read_summary(out)
    if existing is not None and not force:
        if existing.get("fingerprint") == fp:
            logger.info("%s is already evaluated with these settings; nothing to do", out)
            return EvalRun(out, "unchanged", existing)
        if not replace_other:
            raise EvalError(
                f"{out} holds a finished eval with other settings, model or questions (fingerprint "
                f"{str(existing.get('fingerprint'))[7:19]} vs {fp[7:19]}); choose another "
                "--output or pass --force to replace it"
            )
    if cfg.executor.kind == "ray" and sampler is None and executor is None:
        require_ray()  # before anything is written: exit 2 with the install command
    if existing is not None:
        (out / "summary.json").unlink()
    out.mkdir(parents=True, exist_ok=True)
    store = open_store(out, fp)
    try:
        run = _run_shards(cfg, questions, model, store, sampler, executor, quiet, process_exiting)
        rows, timings, resume, engine_info, how, loads = run
        timings["total"] = time.monotonic() - t0
        summary = report.build_summary(
            cfg, fp, ident, data, rows, timings, resume, engine_info, how, gold.as_dict()
        )
        report.write_outputs(out, cfg, rows, summary)
        store.remove()
    finally:
        store.close()  # the lock; shards of an interrupted eval stay for a resume
    logger.info("wrote %s: accuracy %.4f on %d questions", out, summary["accuracy"], len(rows))
    return EvalRun(out, "evaluated", summary, loads)


def _run_shards(
    cfg: EvalConfig,
    questions: list[EvalQuestion],
    model: ResolvedModel,
    store: ShardStore,
    sampler: Sampler | None,
    executor: Executor | None,
    quiet: bool,
    process_exiting: bool,
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, int], Any, dict[str, Any], int]:
    """Reuse the stored shards, generate and score the others: (rows, timings, resume counts,
    engine info, executor description, engine loads)."""
    timings: dict[str, float] = {}
    size = cfg.shard_size
    parts = [questions[i : i + size] for i in range(0, len(questions), size)]
    ids = [[e.question.id for e in part] for part in parts]
    shard_rows = {i: r for i in range(len(parts)) if (r := load_rows(store, i, ids[i])) is not None}
    pending = [i for i in range(len(parts)) if i not in shard_rows]
    gen, pc = cfg.generation, cfg.prefix_check
    per_question = gen.n * gen.max_tokens + (pc.length + pc.slack if pc.enabled else 0)
    token_bound = per_question * sum(len(parts[i]) for i in pending)
    if executor is None:
        executor = make_executor(cfg, model, token_bound, sampler)
    try:
        if pending:
            executor.prepare()  # load before the bar starts, so its rate and ETA count generation
        with phase_progress("eval", len(questions), enabled=not quiet) as advance:
            for done in shard_rows.values():
                advance(len(done), sum(r["tokens"] for r in done))
            if pending:
                tok = _tokenizer(cfg, model, executor)
                shard_rows |= _generate(cfg, executor, tok, parts, pending, store, advance, timings)
        engine_info = executor.engine_info() if pending else None
    finally:
        executor.close(process_exiting=process_exiting)
    rows = [row for i in range(len(parts)) for row in shard_rows[i]]
    resume = {"shards_reused": len(parts) - len(pending), "shards_evaluated": len(pending)}
    if executor.engine_load_s:
        timings["engine_load"] = executor.engine_load_s
    how = executor.describe()
    return rows, timings, resume, engine_info, how, how["replicas"] if executor.engine_load_s else 0


def write_card(cfg: EvalConfig, run: EvalRun) -> Path:
    """Put a finished eval into the card of ``cfg.card`` (base vs this model with ``cfg.base``)."""
    from upft.evaluation.compare import load_run, paired

    assert cfg.card is not None
    base_summary = stats = None
    if cfg.base:
        base_run = load_run(cfg.base)
        stats = paired(base_run, load_run(run.path))
        base_summary = base_run.summary
    return report.update_model_card(Path(cfg.card).expanduser(), run.summary, base_summary, stats)


def release_memory() -> None:
    """Give back what a finished training run held (CUDA caches) before an engine loads."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_trained(config_file: str, folder: Path, quiet: bool = False) -> dict[str, Any]:
    """``upft-train --eval CONFIG``: evaluate the saved model and write its card."""
    from upft.evaluation.config import resolve_config

    cfg = resolve_config(config_file, {"model": str(folder), "card": str(folder)})
    run = evaluate(cfg, quiet=quiet, replace_other=True)  # new weights: a new eval
    card = write_card(cfg, run)
    s = run.summary
    return {
        "output": str(run.path),
        "card": str(card),
        "accuracy": s["accuracy"],
        "accuracy_ci95": s["accuracy_ci95"],
        "questions": s["counts"]["questions"],
    }
