"""Strict YAML files for every config upft reads: recipes, eval configs, training configs.

:class:`Strict` is the one pydantic base of those configs: unknown keys are errors and
assignments are validated. One reader, so every command treats its YAML the same way: a missing
file, bytes that are not UTF-8, a syntax error or a key written twice (which PyYAML would
silently resolve to the last one) is a one-line error naming the file, the line and the fix; and
pydantic validation errors become one line per problem with its field path, its YAML line and,
for an unknown key, the closest valid one.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from builder.errors import UpftError


class Strict(BaseModel):
    """The base of every config model: unknown keys are rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_mapping(
    path: str | Path,
    error: type[UpftError],
    what: str,
    allow_empty: bool = True,
) -> tuple[dict[str, Any], yaml.Node | None]:
    """The mapping in a YAML file and its node tree (for line numbers); ``error`` otherwise.

    An empty file is an empty mapping where ``allow_empty`` (everything may come from flags).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file {str(path)!r} not found; pass the path to a .yaml {what}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save the {what} as UTF-8"
        ) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{at}: not valid YAML: {problem}") from None
    reject_duplicate_keys(root, str(path), error)
    if data is None and allow_empty:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a YAML mapping, got {type(data).__name__}")
    return data, root


def reject_duplicate_keys(
    node: yaml.Node | None, where: str, error: type[UpftError], path: str = ""
) -> None:
    """PyYAML keeps the last of two equal keys silently; in a config that hides an edit."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(getattr(key, "value", ""))
            line = key.start_mark.line + 1
            if name in first:
                raise error(
                    f"{where}:{line}: key {path}{name} appears twice (first at line "
                    f"{first[name]}); keep one of them"
                )
            first[name] = line
            reject_duplicate_keys(value, where, error, f"{path}{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            reject_duplicate_keys(item, where, error, f"{path}{i}.")


def node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based YAML line of the deepest node on ``loc`` that exists in the file."""
    node, line = root, None
    if node is not None:
        line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if getattr(k, "value", None) == str(key):
                    nxt, line = v, k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            node = node.value[key] if key < len(node.value) else None
            if node is not None:
                line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: ``M``, ``M | None`` or ``list[M]`` (None: no model)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def closest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The valid key nearest in spelling to the unknown last key of ``loc``, if one is close."""
    current: Any = model
    for key in loc[:-1]:
        if isinstance(key, int):  # an item of a list field: the model stays the list's
            continue
        info = getattr(current, "model_fields", {}).get(str(key))
        current = _model_in(getattr(info, "annotation", None))
        if current is None:
            return None
    if not loc or not (isinstance(current, type) and issubclass(current, BaseModel)):
        return None
    found = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1, cutoff=0.6)
    return found[0] if found else None


def format_errors(
    exc: ValidationError, where: str, root: yaml.Node | None, model: type[BaseModel], what: str
) -> str:
    """One line per validation problem: field path, ``file:line`` and what to do."""
    lines = [f"{where}: invalid {what} ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc) or "(top level)"
        line = node_line(root, loc)
        at = f"{where}:{line}" if line else where
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
            close = closest_key(model, loc)
            if close:
                msg = f"unknown field; did you mean {close!r}? (or remove it)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {path} ({at}): {msg}")
    return "\n".join(lines)
