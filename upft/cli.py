"""``upft-train``: the command line of the trainer.

One flag per :class:`upft.config.TrainConfig` field (generated from the model's fields, so the
two cannot drift apart), plus ``--config FILE``, ``--quiet`` and ``--verbose``. Flag values are
taken as text and checked by ``upft.config``, so a bad value gets the same "error: ..." line
and exit code 2 as every other ``TrainError``. Only click, yaml and our config module are
imported at start-up: ``--help`` works without torch or transformers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import click

from builder.clikit import handle_errors, run_and_exit
from builder.logs import setup_logging
from upft.config import FIELDS, default_value, field_type, flag_name, resolve_config

logger = logging.getLogger(__name__)

_EPILOG = """Examples:

\b
  upft-train --dataset my-org/gsm8k-upft --revision v1.0.0 \\
      --model Qwen/Qwen2.5-Math-7B-Instruct --output runs/qwen-upft
  upft-train --dataset out/demo-upft/0.1.0 --model embedded:smollm2 \\
      --output runs/demo --max-steps 20 --batch-size 8
  upft-train --config recipes/gsm8k-qwen-math.train.yaml    # a paper setting
  upft-train --config runs/demo/train_config.yaml --resume  # after an interruption

Settings apply in the order defaults < --config FILE < flags. The resolved settings are saved
as train_config.yaml in the output folder.
"""

_METAVARS = {int: "INT", float: "NUM", str: "TEXT", list: "A,B,..."}


def _default_text(key: str) -> str:
    default = default_value(key)
    if default is None:
        return ""
    if isinstance(default, list):
        default = ",".join(default)
    return f" [default: {default}]"


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per config field, all defaulting to None (= not given)."""
    for key in reversed(list(FIELDS)):
        kind, _ = field_type(key)
        help_text = (FIELDS[key].description or "") + _default_text(key)
        if kind is bool:
            option = click.option(
                f"{flag_name(key)}/--no-{key.replace('_', '-')}",
                key,
                default=None,
                help=help_text,
            )
        else:
            option = click.option(
                flag_name(key),
                key,
                default=None,
                type=str,
                metavar=_METAVARS.get(kind, "TEXT"),
                help=help_text,
            )
        fn = option(fn)
    return fn


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EPILOG,
)
@click.option(
    "--config",
    "config_file",
    type=str,
    default=None,
    metavar="FILE",
    help="YAML file of settings (keys as below, with underscores)",
)
@_config_options
@click.option(
    "--resume",
    is_flag=True,
    help="continue an interrupted run from the newest checkpoint in --output (same settings)",
)
@click.option("--quiet", "-q", is_flag=True, help="only warnings and errors; no progress bars")
@click.option("--verbose", "-v", is_flag=True, help="debug logging")
@handle_errors
def main(config_file: str | None, resume: bool, quiet: bool, verbose: bool, **flags: Any) -> None:
    """Fine-tune a model on a UPFT dataset (Unsupervised Prefix Fine-Tuning).

    Loss is taken on completion tokens only: a prefix example teaches its prefix tokens and the
    end-of-turn token, a full-trace example the whole trace; both kinds train together.
    """
    setup_logging(quiet, verbose)
    config = resolve_config(config_file, flags)
    logger.info("settings: %s", json.dumps(config.to_dict()))
    from builder.logs import capture_into, quiet_library_bars
    from upft.train import run_training

    # The libraries' own output goes to train.log in the output folder (its path is printed on
    # failure); the trainer's progress bar stays on screen. --verbose shows everything.
    with capture_into(str(config.output), "train.log", enabled=not verbose, screen_stderr=True):
        if not verbose:
            quiet_library_bars()
        summary = run_training(config, quiet=quiet, resume=resume)
    if not quiet:
        click.echo(
            f"trained {summary['steps']} steps on {summary['examples']['total']} examples; "
            f"final loss {summary['final_loss']}; model in {config.output}",
            err=True,
        )


def entry() -> None:
    """The ``upft-train`` console script."""
    run_and_exit(main)
