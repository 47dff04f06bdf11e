"""Exceptions the builder raises for problems a user can fix.

The CLI maps every ``UpftError`` to a one-paragraph message and exit code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UpftError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 2


class RecipeError(UpftError):
    """The recipe file is missing, not YAML, or does not match the schema."""


class SourceError(UpftError):
    """The question source cannot be read or yields no usable questions."""


class ModelError(UpftError):
    """The model cannot be found, materialised or loaded."""


class SamplingError(UpftError):
    """The sampling engine failed or returned something unusable."""


class ExecutorError(UpftError):
    """The executor (e.g. a Ray cluster of engine replicas) cannot start or lost its replicas."""


class OutputError(UpftError):
    """The output directory is in a state that the build must not overwrite."""


class PublishError(UpftError):
    """Publishing to the Hub failed in a way the user must act on."""


class TrainError(UpftError):
    """The training configuration or dataset cannot be used."""


class EvalError(UpftError):
    """The evaluation settings, or an existing evaluation output, cannot be used."""


class ManifestError(UpftError):
    """A manifest.json is missing, not JSON, or does not match the manifest schema."""
