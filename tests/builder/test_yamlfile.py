"""The strict YAML reader every config uses (builder.yamlfile)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from builder.errors import RecipeError
from builder.yamlfile import format_errors, read_mapping


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    length: int = 1


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    inner: Inner = Inner()


def test_reads_a_mapping_and_its_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  length: 3\n")
    data, root = read_mapping(path, RecipeError, "recipe")
    assert data == {"name": "x", "inner": {"length": 3}}
    assert root is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a: 1\na: 2\n", "c.yaml:2: key a appears twice (first at line 1); keep one of them"),
        (b"a: [1\n", "c.yaml:2: not valid YAML"),
        (b"- 1\n", "c.yaml: a recipe must be a YAML mapping, got list"),
        (b"a: 1\nb: caf\xe9\n", "c.yaml:2: not UTF-8 (byte 0xe9 at offset 11)"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as info:
        read_mapping(path, RecipeError, "recipe")
    assert message in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file .* not found"):
        read_mapping(tmp_path / "none.yaml", RecipeError, "recipe")
    (tmp_path / "e.yaml").write_text("")
    assert read_mapping(tmp_path / "e.yaml", RecipeError, "recipe")[0] == {}
    with pytest.raises(RecipeError, match="must be a YAML mapping, got NoneType"):
        read_mapping(tmp_path / "e.yaml", RecipeError, "recipe", allow_empty=False)


def test_validation_errors_carry_path_line_and_closest_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  lenght: 3\n")
    data, root = read_mapping(path, RecipeError, "thing")
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    text = format_errors(info.value, str(path), root, Outer, "thing")
    assert text.splitlines() == [
        f"{path}: invalid thing (1 problem(s)):",
        f"  - inner.lenght ({path}:3): unknown field; did you mean 'length'? (or remove it)",
    ]
