"""``upft-eval``: the command line of the evaluator (and ``upft-eval compare``).

Thin by design: parse flags, call ``upft.evaluation.runner`` / ``compare``, print the result,
and map every ``UpftError`` to one "error: ..." line with exit code 2 (``builder.cli``'s
handler). Only click, pydantic, yaml and our config modules are imported at start-up, so
``--help`` works without torch, transformers or vLLM installed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from builder.clikit import handle_errors, process_ends_after_command, run_and_exit
from builder.errors import EvalError
from builder.logs import setup_logging
from upft.evaluation import benchmarks

logger = logging.getLogger(__name__)

_EPILOG = (
    """\b
Examples:
  upft-eval --model runs/qwen-upft --data ../shared/data/math500-test.jsonl \\
      --question problem --answer expected_answer --output evals/qwen-upft-math500
  upft-eval --model Qwen/Qwen2.5-Math-7B-Instruct --data gsm8k --output evals/base-gsm8k
  upft-eval compare evals/base-gsm8k evals/qwen-upft-gsm8k
  upft-eval --model runs/demo --data ../shared/data/svamp-test.jsonl \\
      --question "{Body} {Question}" --answer Answer --limit 64 --output evals/demo
  upft-eval --card runs/demo --data svamp --limit 64 --base evals/base-svamp
  upft-eval --config eval.yaml --limit 16
  upft-eval --backend openai --base-url http://127.0.0.1:8000/v1 --served-name qwen \
      --model Qwen/Qwen2.5-Math-7B-Instruct --data gsm8k --output evals/served-gsm8k

\b
Named benchmarks: """
    + ", ".join(f"{b.name} ({b.hub})" for b in benchmarks.BENCHMARKS.values())
    + """.
Settings apply in the order defaults < --config FILE < flags; the resolved settings are saved
as eval_config.yaml in the output folder. An interrupted eval resumes shard by shard; a
finished one is reported again without loading the model. The last line printed is the
output folder."""
)


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EPILOG,
)
@click.option("--config", "config_file", metavar="FILE", help="YAML file of eval settings.")
@click.option("--model", metavar="ID", help="Model folder, Hub id or embedded:smollm2.")
@click.option("--revision", metavar="REV", help="Hub revision of the model.")
@click.option(
    "--data",
    metavar="NAME|FILE|ORG/NAME",
    help="A named benchmark (" + benchmarks.known() + "), a local "
    ".jsonl/.json/.parquet/.csv file, or a Hub dataset id.",
)
@click.option(
    "--question", metavar="FIELD", help="Question field or template, e.g. '{Body} {Question}'."
)
@click.option("--answer", metavar="FIELD", help="Gold-answer field.")
@click.option(
    "--answer-pattern",
    metavar="REGEX",
    help="Regular expression with one group: the gold answer inside the answer field.",
)
@click.option("--id-field", metavar="FIELD", help="Question-id field (default: a text hash).")
@click.option("--split", metavar="SPLIT", help="Hub dataset split.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate the first N questions.")
@click.option(
    "--output",
    "-o",
    metavar="DIR",
    help="Output folder (default with --card: MODEL_DIR/eval/<data>).",
)
@click.option(
    "--backend",
    type=click.Choice(["vllm", "transformers", "openai"]),
    help="Generation engine (openai: a served model at --base-url).",
)
@click.option("--base-url", metavar="URL", help="OpenAI-compatible endpoint (backend openai).")
@click.option("--served-name", metavar="NAME", help="The model's name on the server [--model].")
@click.option("--api-key-env", metavar="VAR", help="Environment variable holding the server's key.")
@click.option(
    "--tokenizer", metavar="ID", help="The served model's tokenizer (folder or Hub id) [--model]."
)
@click.option(
    "--endpoint",
    type=click.Choice(["chat", "completions"]),
    help="Served model: chat (server's template) or completions (token ids templated here).",
)
@click.option(
    "--max-concurrency", type=click.IntRange(min=1), help="Served model: requests in flight."
)
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]))
@click.option("--max-model-len", type=click.IntRange(min=64), help="Engine context length.")
@click.option("--cpu-kvcache-gib", type=click.IntRange(min=1), help="vLLM KV cache on CPU.")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), help="GPUs per model.")
@click.option(
    "--compile",
    type=click.Choice(["auto", "compiled", "eager"]),
    help="vLLM compilation (auto: on GPUs, and on CPUs for long evals).",
)
@click.option("--system-prompt", metavar="TEXT", help="System message before each question.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Answer budget [default: 1024].")
@click.option("--temperature", type=float, help="0 = greedy (the default).")
@click.option("--top-p", type=float, help="Nucleus sampling (with --temperature > 0).")
@click.option("--samples", "-n", type=click.IntRange(min=1), help="Samples per question (pass@k).")
@click.option(
    "--pass-k",
    "pass_k",
    type=click.IntRange(min=1),
    multiple=True,
    help="k for pass@k; repeat for several [default: 1 and n].",
)
@click.option("--seed", type=int, help="Sampling seed.")
@click.option(
    "--prefix-length",
    type=click.IntRange(min=1),
    help="L of the prefix check (the trained prefix length) [default: 32].",
)
@click.option(
    "--no-prefix-check", is_flag=True, default=None, help="Skip the prefix-behaviour pass."
)
@click.option("--shard-size", type=click.IntRange(min=1), help="Questions per resumable shard.")
@click.option(
    "--card",
    metavar="MODEL_DIR",
    help="Write the results into MODEL_DIR/README.md (model-index + table); evaluates "
    "MODEL_DIR unless --model is given.",
)
@click.option(
    "--base",
    metavar="EVAL_DIR",
    help="Finished eval of the base model, shown beside this one in the card.",
)
@click.option("--force", is_flag=True, help="Re-run even if OUTPUT holds a finished eval.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.pass_context
@handle_errors
def main(
    ctx: click.Context,
    config_file: str | None,
    force: bool,
    quiet: bool,
    verbose: bool,
    **flags: Any,
) -> None:
    """Evaluate a model on math questions: zero-shot, greedy, scored with math-verify.

    Writes OUTPUT/results.jsonl (one row per question), OUTPUT/summary.json (accuracy with a
    95% interval, pass@k, answer length, truncation, boxed and final-answer rates, the prefix
    behaviour, model and data identity, timings) and OUTPUT/README.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    if config_file is None and all(v in (None, ()) for v in flags.values()):
        click.echo(ctx.get_help())
        return
    setup_logging(quiet, verbose)
    from upft.evaluation.config import resolve_config

    cfg = resolve_config(config_file, flags)
    check_inputs(cfg)
    from builder.logs import capture_into
    from upft.evaluation.runner import evaluate, write_card

    # The engine's own output goes to eval.log in the output folder (its path is printed on
    # failure); --verbose shows everything.
    with capture_into(cfg.output or ".", "eval.log", enabled=not verbose and bool(cfg.output)):
        run = evaluate(cfg, force=force, quiet=quiet, process_exiting=process_ends_after_command())
    s = run.summary
    if run.status == "unchanged":
        click.echo(
            f"already evaluated with these settings (fingerprint {s['fingerprint'][7:19]});"
            " no model loaded"
        )
    lo, hi = s["accuracy_ci95"]
    click.echo(
        f"accuracy: {100 * s['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] on "
        f"{s['counts']['questions']} questions; mean answer {s['mean_answer_tokens']} "
        f"tokens; truncated {100 * (s['truncation_rate'] or 0):.1f}%"
    )
    pb = s.get("prefix_behaviour")
    if pb:
        click.echo(
            f"prefix check: {100 * (pb['stop_within_rate'] or 0):.1f}% stop within "
            f"{pb['length']}+{pb['slack']} tokens under the prefix instruction"
        )
    if cfg.card:
        card = write_card(cfg, run)
        click.echo(f"model card: {card}")
    click.echo(str(run.path))


def check_inputs(cfg: Any, card: bool = True) -> None:
    """Files and folders the settings name, checked before any model loads (a missing --base
    would otherwise be found only after the whole eval has run; ``upft-train --eval`` checks
    its eval config this way before training, ``card=False`` as its card folder comes later)."""
    path = cfg.data.path
    if path is not None and not Path(path).expanduser().is_file():
        problem = "is a folder" if Path(path).expanduser().is_dir() else "not found"
        raise EvalError(
            f"data file {path!r} {problem}; pass an existing .jsonl/.json/.parquet/.csv file "
            f"with --data (or data.path in the config), a benchmark ({benchmarks.known()}) or "
            "a Hub dataset id"
        )
    if card and cfg.card is not None and not Path(cfg.card).expanduser().is_dir():
        raise EvalError(
            f"--card {cfg.card!r} is not a folder; pass the model folder whose README.md gets "
            "the results (e.g. the --output of upft-train)"
        )
    if cfg.base is not None:
        from upft.evaluation.compare import load_run

        load_run(cfg.base)  # a finished eval of the base model, or a clear error now


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="EVAL_DIR EVAL_DIR...")
@click.option(
    "--output",
    "-o",
    metavar="DIR",
    help="Also write comparison.md, comparison.json and accuracy.png here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@handle_errors
def compare_cmd(runs: tuple[str, ...], output: str | None, as_json: bool, seed: int) -> None:
    """Compare finished evals on the same questions; the first is the baseline.

    Prints accuracy with its 95% interval, the delta against the baseline with a paired
    bootstrap 95% interval, McNemar's exact p-value, and the answer-length, truncation,
    final-answer and prefix-stop columns. Runs on different questions are refused.
    """
    from upft.evaluation import compare, report

    if output and Path(output).exists() and not Path(output).is_dir():
        raise EvalError(f"--output {output!r} is a file; pass a folder for the comparison")
    result = compare.compare(list(runs), seed=seed)
    table = compare.format_table(result)
    click.echo(json.dumps(result, indent=2) if as_json else table)
    if output:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "comparison.md").write_text(table + "\n", encoding="utf-8")
        (folder / "comparison.json").write_text(
            json.dumps(result, indent=2) + "\n", encoding="utf-8"
        )
        png = compare.plot(result, folder / report.PLOT_NAME)
        click.echo(f"wrote {folder / 'comparison.md'} and {png}", err=True)


def entry() -> None:
    """The ``upft-eval`` console script."""
    run_and_exit(main)


if __name__ == "__main__":
    entry()
