"""Command-line entry points: ``upft-build`` and ``push-to-hub``.

Thin by design: parse flags, call the library (``builder.pipeline``, ``builder.hub``), map
``UpftError`` to a message on stderr and exit code 2. Everything importable from here stays
light so that ``--help`` works without vLLM, torch or transformers installed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from builder.clikit import (
    handle_errors,
    note_for_errors,
    process_ends_after_command,
    run_and_exit,
)
from builder.logs import build_log_path, capture, setup_logging

__all__ = ["build_entry", "build_main", "push_entry", "push_main"]

# --- upft-build -------------------------------------------------------------------------------


BUILD_EPILOG = """\b
Examples:
  upft-build recipes/demo.yaml
  upft-build recipes/demo.yaml --limit 16 --backend transformers --out /tmp/out
  upft-build recipes/gsm8k-qwen-math.yaml --dry-run

The last line printed on success is the version directory."""


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=BUILD_EPILOG)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Output root (overrides output.dir).")
@click.option("--limit", type=click.IntRange(min=1), help="Use at most N questions (source.limit).")
@click.option(
    "--backend",
    type=click.Choice(["vllm", "transformers", "openai"]),
    help="Sampling engine (overrides model.backend; openai: a served model, model.base_url).",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate recipe and source, print the plan, sample nothing."
)
@click.option("--force", is_flag=True, help="Rebuild even if this version exists (replaces it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@handle_errors
def build_main(
    recipe: str,
    out: str | None,
    limit: int | None,
    backend: str | None,
    dry_run: bool,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Build a UPFT dataset from RECIPE (YAML) into <output.dir>/<name>/<version>/.

    Questions are sampled in two phases: N short continuations of at most L tokens per question
    (voted into one prefix), then one full trace for a seeded share p of the questions. The
    output directory is laid out like a Hub dataset repo (card, data/<config>/*.parquet,
    recipe.yaml, manifest.json). Interrupted builds resume from the shards already sampled.
    """
    from builder.recipe import apply_overrides, load_recipe
    from builder.store import staging_dir

    setup_logging(quiet, verbose)
    _check_recipe_text(recipe)
    parsed, base_dir = load_recipe(recipe)
    parsed = apply_overrides(parsed, out=out, limit=limit, backend=backend)
    _check_inputs(parsed)
    resume = ["upft-build", recipe] + [
        f"--{k}={v}"
        for k, v in (("out", out), ("limit", limit), ("backend", backend))
        if v is not None
    ]
    note_for_errors(
        output=str(Path(parsed.output.dir) / parsed.name),
        interrupted=f"interrupted: sampled shards are kept in "
        f"{staging_dir(parsed.output.dir, parsed.name, parsed.version)}; "
        f"resume with: {shlex.join(resume)}",
    )
    if dry_run:
        from builder.pipeline import plan

        _print_plan(plan(parsed, base_dir))
        return
    from builder.pipeline import build

    # The engines' own output goes to this log (shown on failure); --verbose shows it all.
    log = build_log_path(parsed.output.dir, parsed.name, parsed.version)
    with capture(log, enabled=not verbose):
        result = build(
            parsed, base_dir, force=force, quiet=quiet, process_exiting=process_ends_after_command()
        )
    m = result.manifest
    if result.status == "unchanged":
        click.echo(
            f"already built with this recipe (fingerprint {m.fingerprint[:12]}); nothing sampled"
        )
    else:
        c, t = m.counts, m.tokens
        click.echo(
            f"questions: {c.questions}  mixture rows: {c.mixture_rows} "
            f"({c.prefix_rows} prefix, {c.full_rows} full)  traces: {c.trace_rows}"
        )
        reduction = (
            f"{t.reduction_pct:.1f}% fewer than RFT (~{t.rft_estimate or 0:,})"
            if t.reduction_pct is not None
            else "no RFT estimate (no full traces)"
        )
        click.echo(
            f"sampled tokens: {t.total_sampled:,} (prefix {t.prefix_phase:,}, "
            f"full {t.full_phase:,}); {reduction}"
        )
        click.echo(f"mean agreement at L: {m.agreement.mean_at_L}")
    click.echo(str(result.path))


def _check_inputs(parsed: Any) -> None:
    """Checks that need no engine: the output location and a local model's files."""
    from builder.store import check_output_location

    check_output_location(parsed.output.dir, parsed.name, parsed.version)
    if parsed.model.id.startswith("embedded:"):
        return  # resolving it may convert the model: left to the build
    from builder.errors import ModelError
    from builder.models import resolve_model

    model = resolve_model(parsed.model.id, parsed.model.revision)
    folder = Path(model.path)
    if not folder.is_dir() or parsed.model.chat_template is not None:
        return  # a Hub id (checked when it loads) or an explicit template
    config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file() or (
        folder / "chat_template.json"
    ).is_file()
    if not config.is_file():
        return  # no tokenizer files at all: loading the model says so
    if not has_template:
        try:
            has_template = bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            has_template = False
    if not has_template:
        raise ModelError(
            f"model {parsed.model.id!r} has no chat template (none in {config.name} or "
            "chat_template.jinja); set model.chat_template in the recipe to a Jinja template, "
            "or use an instruction-tuned model that ships one"
        )


def _check_recipe_text(recipe: str) -> None:
    """A recipe with bytes that are not UTF-8 is named with line and offset, not a traceback."""
    from builder.errors import RecipeError, SourceError
    from builder.source_files import check_utf8

    try:
        check_utf8(Path(recipe))
    except SourceError as exc:
        raise RecipeError(str(exc)) from None
    except OSError:
        pass  # missing or unreadable: load_recipe says so


def _print_plan(p: dict[str, Any]) -> None:
    for src in p["sources"]:
        c = src["counts"]
        across = (
            f" (+{c['duplicate_across']} of an earlier source)" if len(p["sources"]) > 1 else ""
        )
        click.echo(
            f"source {src['name']}: {src.get('id') or src.get('path')}  read {c['read']}, "
            f"empty {c['empty']}, duplicate {c['duplicate_within']}{across}, "
            f"over limit {c['limited']}, kept {c['kept']}"
        )
    gold = p.get("gold_answers")
    if gold is not None:
        click.echo(
            f"gold answers: {gold['with_gold']} in field {gold['field']!r}, "
            f"{gold['unparsed']} parse to nothing comparable"
        )
    phases = (("prefix_phase", "phase 1 (prefixes)"), ("full_phase", "phase 2 (full traces)"))
    for key, label in phases:
        ph = p[key]
        tries = f", up to {ph['max_tries']} tries each" if ph.get("max_tries", 1) > 1 else ""
        prompt = f", {ph['prompt']} prompt" if "prompt" in ph else ""
        click.echo(
            f"{label}: {ph['prompts']} prompts{prompt}, {ph['samples']} samples x <= "
            f"{ph['max_tokens_each']} tokens{tries} = <= {ph['token_bound']:,} tokens"
        )
    click.echo(
        f"token budget (upper bound): {p['token_bound']:,}; RFT (16 full traces/question) "
        f"upper bound: {p['rft_token_bound']:,} (ratio {p['bound_ratio_vs_rft']})"
    )
    click.echo(f"output: {p['output']}")
    click.echo("dry run: recipe and source are valid; nothing was sampled")


# --- push-to-hub ------------------------------------------------------------------------------


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example:\n\n  push-to-hub out/demo-upft/1.0.0 --repo-id my-org/demo-upft --dry-run",
)
@click.argument("version_dir", type=click.Path(file_okay=False))
@click.option(
    "--repo-id",
    metavar="ORG/NAME",
    help="Target dataset repo (default: publish.repo_id from the recipe).",
)
@click.option("--private", is_flag=True, help="Create the repo as private if it does not exist.")
@click.option(
    "--revision",
    default="main",
    show_default=True,
    metavar="BRANCH",
    help="Branch to commit to (created from main if missing).",
)
@click.option("--message", "-m", metavar="TEXT", help="Commit message.")
@click.option(
    "--dry-run", is_flag=True, help="List what would be published; write nothing to the Hub."
)
@click.option(
    "--token",
    metavar="TOKEN",
    help="Hub token (default: HF_TOKEN or the `hf auth login` cache). Never printed.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the commit id and the URL.")
@handle_errors
def push_main(
    version_dir: str,
    repo_id: str | None,
    private: bool,
    revision: str,
    message: str | None,
    dry_run: bool,
    token: str | None,
    quiet: bool,
) -> None:
    """Publish VERSION_DIR (written by upft-build) to the Hub as one commit tagged v<version>.

    Re-running is safe: an identical published version is left alone, a different one under
    the same tag is refused. The last line printed is the URL of the tagged revision.
    """
    setup_logging(quiet)
    from builder.hub import push_version

    result = push_version(
        version_dir,
        repo_id,
        private=private,
        revision=revision,
        message=message,
        token=token,
        dry_run=dry_run,
    )
    if result.status == "dry-run":
        total = sum(f.size for f in result.files)
        click.echo(
            f"dry run: nothing was written to the Hub; target {result.repo_id} "
            f"(branch {revision}), tag {result.tag}"
        )
        if result.detail:
            click.echo(result.detail)
        if not quiet:
            for item in result.files:
                click.echo(f"  {item.size:>12,}  {item.path}")
        click.echo(f"{len(result.files)} files, {total:,} bytes")
    else:
        if not quiet:
            if result.status == "unchanged":
                click.echo(
                    f"{result.repo_id} {result.tag} is already published with identical "
                    "content; nothing to do"
                )
            else:
                click.echo(
                    f"published {len(result.files)} files to {result.repo_id} as {result.tag}"
                )
        click.echo(f"commit: {result.commit}")
    click.echo(result.url)


def build_entry() -> None:
    """The ``upft-build`` console script."""
    run_and_exit(build_main)


def push_entry() -> None:
    """The ``push-to-hub`` console script."""
    run_and_exit(push_main)
