"""builder/errors.py: one hierarchy; every error a user can fix exits 2 with its message only."""

from __future__ import annotations

import inspect

import click
import pytest
from click.testing import CliRunner

from builder import errors
from builder.clikit import handle_errors

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.UpftError) and cls is not errors.UpftError
]


def test_every_error_of_the_module_belongs_to_the_one_hierarchy() -> None:
    others = [
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, Exception) and not issubclass(cls, errors.UpftError)
    ]
    assert others == []
    assert {cls.__name__ for cls in ERROR_CLASSES} >= {
        "RecipeError",
        "SourceError",
        "ModelError",
        "SamplingError",
        "ExecutorError",
        "OutputError",
        "PublishError",
        "TrainError",
        "EvalError",
        "ManifestError",
    }


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_each_error_becomes_its_message_and_exit_code_2(cls: type[errors.UpftError]) -> None:
    @click.command()
    @handle_errors
    def cmd() -> None:
        raise cls("source.path: 'q.jsonl' does not exist; fix the path")

    result = CliRunner().invoke(cmd, [])
    assert cls.exit_code == 2
    assert result.exit_code == 2
    assert result.output == "error: source.path: 'q.jsonl' does not exist; fix the path\n"
    assert "Traceback" not in result.output


def test_a_bug_is_not_dressed_up_as_a_user_error() -> None:
    @click.command()
    @handle_errors
    def cmd() -> None:
        raise KeyError("internal")

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)
