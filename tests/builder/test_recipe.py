"""Tests for builder.recipe: schema errors with field paths and YAML lines, overrides, round trip.

Bad recipes are written to files and loaded with ``load_recipe`` so that each expected message
is the one a user would see, including the ``file:line`` of the offending key.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from builder.errors import RecipeError, UpftError
from builder.recipe import (
    DEFAULT_INSTRUCTION,
    Recipe,
    SourceConfig,
    apply_overrides,
    load_recipe,
    parse_recipe,
)
from tests.conftest import DEMO_RECIPE

GOOD = """\
name: demo
version: 1.0.0
source:
  path: q.jsonl
  question: question
"""


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value).replace(str(path), "recipe.yaml")


BAD_RECIPES = [
    pytest.param(
        GOOD + "prefix:\n  lenght: 8\n",
        [
            "recipe.yaml: invalid recipe (1 problem(s)):",
            "  - prefix.lenght (recipe.yaml:7): unknown field; did you mean 'length'? "
            "(or remove it)",
        ],
        id="unknown-nested-key",
    ),
    pytest.param(
        GOOD + "colour: red\n",
        ["  - colour (recipe.yaml:6): unknown field; remove it or check its spelling"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        GOOD + "prefix:\n  lenght: 8\ncolour: red\n",
        ["(2 problem(s))", "prefix.lenght (recipe.yaml:7)", "colour (recipe.yaml:8)"],
        id="every-problem-listed",
    ),
    pytest.param(
        "version: 1.0.0\nsource:\n  path: q.jsonl\n",
        ["  - name (recipe.yaml:1): required field is missing"],
        id="missing-name",
    ),
    pytest.param(
        "name: demo\nsource:\n  path: q.jsonl\n",
        ["  - version (recipe.yaml:1): required field is missing"],
        id="missing-version",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\n",
        [
            "  - (top level) (recipe.yaml:1): a recipe reads its questions from 'source' (one "
            "question set) or 'sources' (a list of them): set exactly one of the two"
        ],
        id="missing-source",
    ),
    pytest.param(
        GOOD.replace("1.0.0", "'1.2'"),
        ["  - version (recipe.yaml:2): version '1.2' is not a semantic version like 1.0.0"],
        id="semver-two-parts",
    ),
    pytest.param(
        GOOD.replace("1.0.0", "v1.0.0"),
        ["version (recipe.yaml:2): version 'v1.0.0' is not a semantic version like 1.0.0"],
        id="semver-v-prefix",
    ),
    pytest.param(
        GOOD.replace("1.0.0", "1.0"),  # YAML reads this as the float 1.0
        ["version (recipe.yaml:2): version '1.0' is not a semantic version like 1.0.0"],
        id="semver-yaml-float",
    ),
    pytest.param(
        GOOD.replace("name: demo", "name: my demo"),
        ["name (recipe.yaml:1): name 'my demo' must be letters, digits, '.', '_' or '-'"],
        id="name-with-space",
    ),
    pytest.param(
        GOOD + "  hub: openai/gsm8k\n",
        [
            "  - source (recipe.yaml:3): set exactly one of 'hub' (a Hub dataset id) or 'path' "
            "(a local file)"
        ],
        id="both-hub-and-path",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\nsource:\n  question: question\n",
        ["  - source (recipe.yaml:3): set exactly one of 'hub'"],
        id="neither-hub-nor-path",
    ),
    pytest.param(
        GOOD.replace("q.jsonl", "questions.txt"),
        [
            "  - source (recipe.yaml:3): path 'questions.txt' has suffix '.txt'; use .jsonl, "
            ".json, .parquet or .csv"
        ],
        id="bad-suffix",
    ),
    pytest.param(
        GOOD + "  config: main\n",
        ["source (recipe.yaml:3): 'config' only applies to a Hub source; remove it"],
        id="config-with-local-path",
    ),
    pytest.param(
        GOOD + "  limit: 0\n",
        ["  - source.limit (recipe.yaml:6): Input should be greater than or equal to 1"],
        id="limit-zero",
    ),
    pytest.param(
        GOOD + "prefix:\n  vote: majority\n  samples: 1\n",
        [
            "  - prefix (recipe.yaml:6): vote 'majority' needs samples >= 2 (use vote 'first' "
            "for one sample)"
        ],
        id="majority-with-one-sample",
    ),
    pytest.param(
        GOOD + "prefix:\n  vote: first\n  min_agreement: 0.5\n",
        [
            "  - prefix (recipe.yaml:6): min_agreement only applies to vote 'majority'; remove it "
            "or set 0"
        ],
        id="min-agreement-with-first",
    ),
    pytest.param(
        GOOD + "prefix:\n  vote: mode\n",
        ["  - prefix.vote (recipe.yaml:7): Input should be 'first' or 'majority'"],
        id="unknown-vote",
    ),
    pytest.param(
        GOOD + "  questoin: q\n",
        ["  - source.questoin (recipe.yaml:6): unknown field; did you mean 'question'?"],
        id="typo-in-the-source",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\nsources:\n- path: a.jsonl\n- path: b.csv\n  anwser: x\n",
        ["  - sources.1.anwser (recipe.yaml:6): unknown field; did you mean 'answer'?"],
        id="typo-in-the-second-source",
    ),
    pytest.param(
        GOOD + "sources:\n- path: b.jsonl\n",
        ["'source' (one question set) or 'sources' (a list of them): set exactly one"],
        id="source-and-sources",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\nsources: []\n",
        ["  - sources (recipe.yaml:3): List should have at least 1 item after validation"],
        id="empty-sources",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\nsources:\n- path: data/train.jsonl\n- path: b/train.csv\n",
        [
            "  - (top level) (recipe.yaml:1): sources.0 and sources.1 are both named 'train'; "
            "give them different 'name's"
        ],
        id="sources-with-the-same-name",
    ),
    pytest.param(
        GOOD + "  name: my set\n",
        ["name 'my set' must be 1-64 letters, digits, '.', '_' or '-'"],
        id="bad-source-name",
    ),
    pytest.param(
        GOOD + "  streaming: true\n",
        ["source (recipe.yaml:3): 'streaming' only applies to a Hub source; remove it"],
        id="streaming-a-local-file",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\nsources:\n- {path: a.jsonl, answer: a}\n"
        "- {path: b.jsonl}\nlabel_filter: {enabled: true}\n",
        ["label_filter.enabled needs gold answers: set sources.1.answer to the answer field"],
        id="label-filter-with-a-source-without-answers",
    ),
    pytest.param(
        GOOD + "label_filter:\n  enabled: true\n",
        ["label_filter.enabled needs gold answers: set source.answer to the answer field"],
        id="label-filter-without-answer",
    ),
    pytest.param(
        GOOD + "  answer: a\nlabel_filter:\n  enabled: true\nprefix:\n  vote: majority\n"
        "  samples: 8\n",
        ["leave prefix.vote at 'first' and prefix.samples at 1"],
        id="label-filter-with-voting",
    ),
    pytest.param(
        GOOD + "mixture:\n  full_trace_tries: 0\n",
        ["mixture.full_trace_tries (recipe.yaml:7): Input should be greater than or equal to 1"],
        id="zero-full-trace-tries",
    ),
    pytest.param(
        GOOD + "prefix:\n  sample_prompt: question\n",
        ["prefix.sample_prompt (recipe.yaml:7): Input should be 'plain' or 'instruction'"],
        id="unknown-sample-prompt",
    ),
    pytest.param(
        GOOD + "sampling:\n  temperature: -0.1\n",
        ["  - sampling.temperature (recipe.yaml:7): Input should be greater than or equal to 0"],
        id="negative-temperature",
    ),
    pytest.param(
        GOOD + "mixture:\n  full_trace_ratio: 1.5\n",
        ["  - mixture.full_trace_ratio (recipe.yaml:7): Input should be less than or equal to 1"],
        id="full-trace-ratio-above-one",
    ),
    pytest.param(
        GOOD + "model:\n  cpu_kvcache_gib: 2.5\n",
        [
            "  - model.cpu_kvcache_gib (recipe.yaml:7): Input should be a valid integer, "
            "got a number with a fractional part"
        ],
        id="kv-cache-not-whole-gib",
    ),
    pytest.param(
        GOOD + "model:\n  kv_block_size: 24\n",
        ["  - model.kv_block_size (recipe.yaml:7): Input should be a multiple of 16"],
        id="kv-block-size-not-multiple-of-16",
    ),
    pytest.param(
        GOOD + "publish:\n  repo_id: just-a-name\n",
        ["  - publish.repo_id (recipe.yaml:7): repo_id 'just-a-name' must look like 'org/name'"],
        id="repo-id-without-org",
    ),
    pytest.param(
        GOOD + "publish:\n  repo_id: org/sub/name\n",
        ["publish.repo_id (recipe.yaml:7): repo_id 'org/sub/name' must look like 'org/name'"],
        id="repo-id-two-slashes",
    ),
    pytest.param(
        GOOD + "publish:\n  repo_id: /name\n",
        ["publish.repo_id (recipe.yaml:7): repo_id '/name' must look like 'org/name'"],
        id="repo-id-empty-org",
    ),
    pytest.param(
        GOOD + "publish:\n  repo_id: org/my name\n",
        ["publish.repo_id (recipe.yaml:7): repo_id 'org/my name' must look like 'org/name'"],
        id="repo-id-with-space",
    ),
    pytest.param(
        GOOD + "  answer: solution\n  answer_pattern: 'Answer: ('\n",
        [
            "source.answer_pattern (recipe.yaml:7): answer_pattern 'Answer: (' is not a valid "
            "regular expression: missing ), unterminated subpattern at position 8"
        ],
        id="answer-pattern-not-a-regex",
    ),
    pytest.param(
        GOOD + "  answer: solution\n  answer_pattern: '#### \\d+'\n",
        [
            "source.answer_pattern (recipe.yaml:7): answer_pattern '#### \\\\d+' has 0 groups; "
            "it needs exactly one group around the answer"
        ],
        id="answer-pattern-without-a-group",
    ),
    pytest.param(
        GOOD + "  answer: solution\n  answer_pattern: '(a)|(b)'\n",
        ["source.answer_pattern (recipe.yaml:7): answer_pattern '(a)|(b)' has 2 groups"],
        id="answer-pattern-two-groups",
    ),
    pytest.param(
        GOOD + "  answer_pattern: 'Answer: (.+)'\n",
        ["source (recipe.yaml:3): 'answer_pattern' applies to the answer field: set 'answer'"],
        id="answer-pattern-without-answer",
    ),
    pytest.param(
        GOOD + "prefix:\n  length: [8\n",
        ["recipe.yaml:8: not valid YAML: expected ',' or ']', but got '<stream end>'"],
        id="yaml-unclosed-bracket",
    ),
    pytest.param(
        "name: demo\nversion: 1.0.0\nsource:\n\tpath: q.jsonl\n",
        ["recipe.yaml:4: not valid YAML: found character '\\t' that cannot start any token"],
        id="yaml-tab",
    ),
    pytest.param(
        GOOD + "prefix:\n  samples: 4\n  samples: 8\n",
        ["recipe.yaml:8: key prefix.samples appears twice (first at line 7); keep one of them"],
        id="duplicate-key",
    ),
    pytest.param(
        "- name: demo\n- version: 1.0.0\n",
        ["recipe.yaml: a recipe must be a YAML mapping, got list"],
        id="list-not-mapping",
    ),
    pytest.param(
        "",
        ["recipe.yaml: a recipe must be a YAML mapping, got NoneType"],
        id="empty-file",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_RECIPES)
def test_bad_recipe_message(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = _error(tmp_path, text)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "Traceback" not in message


def test_recipe_error_is_a_user_error_with_exit_code_2(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "colour: red\n")
    with pytest.raises(UpftError) as info:
        load_recipe(path)
    assert isinstance(info.value, RecipeError)
    assert info.value.exit_code == 2


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(missing)
    assert str(info.value) == (
        f"recipe file {str(missing)!r} not found; pass the path to a .yaml recipe"
    )


def test_a_folder_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found; pass the path to a .yaml recipe"):
        load_recipe(tmp_path)


def test_parse_recipe_without_a_file_names_fields_only() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(
            {
                "name": "demo",
                "version": "1.0.0",
                "source": {"path": "q.csv"},
                "sampling": {"temperature": -1},
            }
        )
    assert str(info.value) == (
        "<recipe>: invalid recipe (1 problem(s)):\n"
        "  - sampling.temperature (<recipe>): Input should be greater than or equal to 0"
    )


def test_good_recipe_gets_defaults_and_its_folder(tmp_path: Path) -> None:
    recipe, base = load_recipe(_write(tmp_path, GOOD))
    assert base == tmp_path.resolve()
    assert (recipe.name, recipe.version) == ("demo", "1.0.0")
    assert recipe.source.path == "q.jsonl"
    assert recipe.source.split == "train"
    assert recipe.language == ["en"]
    assert recipe.model.id == "embedded:smollm2"
    assert recipe.model.backend == "vllm"
    assert recipe.sampling.temperature == 0.6
    assert recipe.sampling.top_p is None and recipe.sampling.top_k is None
    # The paper's method by default: one plain-prompt sample, its first L tokens.
    assert (recipe.prefix.length, recipe.prefix.vote, recipe.prefix.samples) == (32, "first", 1)
    assert recipe.prefix.sample_prompt == "plain"
    assert recipe.sampling.repetition_penalty is None
    assert recipe.prefix.min_agreement == 0.0
    assert recipe.prefix.instruction == DEFAULT_INSTRUCTION
    assert recipe.mixture.full_trace_ratio == 0.1
    assert recipe.mixture.full_trace_tries == 3
    assert recipe.label_filter.enabled is False and recipe.label_filter.samples == 16
    assert recipe.output.dir == "./out"
    assert recipe.publish.repo_id is None


def test_good_edge_values_are_accepted(tmp_path: Path) -> None:
    text = GOOD.replace("1.0.0", "2.10.3-rc.1") + textwrap.dedent("""\
        prefix:
          vote: first
          samples: 1
        mixture:
          full_trace_ratio: 1.0
        sampling:
          temperature: 0
        publish:
          repo_id: my-org/upft_demo.v2
        """)
    recipe, _ = load_recipe(_write(tmp_path, text))
    assert recipe.version == "2.10.3-rc.1"
    assert (recipe.prefix.vote, recipe.prefix.samples) == ("first", 1)
    assert recipe.mixture.full_trace_ratio == 1.0
    assert recipe.sampling.temperature == 0.0
    assert recipe.publish.repo_id == "my-org/upft_demo.v2"


def test_question_fields() -> None:
    assert SourceConfig(path="a.jsonl").question_fields() == ["question"]
    assert SourceConfig(path="a.jsonl", question="problem").question_fields() == ["problem"]
    template = SourceConfig(path="a.jsonl", question="{Body} {Question}")
    assert template.question_fields() == ["Body", "Question"]


# --- precedence and round trip ----------------------------------------------------------------


FILE_VALUES = GOOD + textwrap.dedent("""\
      limit: 10
    model:
      backend: transformers
    output:
      dir: ./from-file
    """)


def test_overrides_precedence_defaults_file_flags(tmp_path: Path) -> None:
    recipe, _ = load_recipe(_write(tmp_path, FILE_VALUES))
    # The file beats the defaults ...
    assert recipe.source.limit == 10
    assert recipe.model.backend == "transformers"
    assert recipe.output.dir == "./from-file"
    assert recipe.sampling.temperature == 0.6  # ... and defaults fill what it leaves out.

    unchanged = apply_overrides(recipe, out=None, limit=None, backend=None)
    assert unchanged == recipe

    flagged = apply_overrides(recipe, out=tmp_path / "flag-out", limit=3, backend="vllm")
    assert flagged.output.dir == str(tmp_path / "flag-out")
    assert flagged.source.limit == 3
    assert flagged.model.backend == "vllm"
    # Everything not named by a flag keeps the file's (or default) value.
    assert flagged.source.path == "q.jsonl"
    assert flagged.output.shard_size == recipe.output.shard_size
    assert flagged.sampling == recipe.sampling
    # The recipe given in is not modified.
    assert (recipe.source.limit, recipe.output.dir) == (10, "./from-file")


def test_one_flag_changes_only_its_field(tmp_path: Path) -> None:
    recipe, _ = load_recipe(_write(tmp_path, FILE_VALUES))
    only_limit = apply_overrides(recipe, limit=5)
    assert only_limit.source.limit == 5
    assert only_limit.model.backend == "transformers"
    assert only_limit.output.dir == "./from-file"


def test_bad_flag_value_is_a_recipe_error(tmp_path: Path) -> None:
    recipe, _ = load_recipe(_write(tmp_path, GOOD))
    with pytest.raises(RecipeError) as info:
        apply_overrides(recipe, limit=0)
    message = str(info.value)
    assert message.startswith("command-line flags: invalid recipe (1 problem(s)):")
    assert (
        "source.limit (command-line flags): Input should be greater than or equal to 1" in message
    )


def test_demo_recipe_round_trips_through_resolved_yaml(tmp_path: Path) -> None:
    recipe, _ = load_recipe(DEMO_RECIPE)
    text = recipe.to_yaml()
    again = parse_recipe(yaml.safe_load(text))
    assert again == recipe
    assert again.to_yaml() == text
    # The resolved file names every field, so it is a complete recipe by itself.
    written = _write(tmp_path, text, "resolved.yaml")
    assert load_recipe(written)[0] == recipe
    # (of `source` and `sources`, the one the recipe uses)
    assert list(yaml.safe_load(text)) == [f for f in Recipe.model_fields if f != "sources"]


def test_non_default_recipe_round_trips(tmp_path: Path) -> None:
    recipe = parse_recipe(
        {
            "name": "hub-build",
            "version": "0.3.1",
            "description": "d",
            "license": "mit",
            "language": ["en", "fr"],
            "source": {
                "hub": "openai/gsm8k",
                "config": "main",
                "split": "test",
                "revision": "abc",
                "question": "{q} {extra}",
                "answer": "answer",
                "id": "id",
                "limit": 7,
                "shuffle": True,
                "seed": 3,
            },
            "model": {
                "id": "some/model",
                "backend": "transformers",
                "dtype": "float32",
                "max_model_len": 512,
                "system_prompt": "Be brief.",
            },
            "sampling": {
                "temperature": 0.0,
                "top_p": 0.95,
                "top_k": 20,
                "repetition_penalty": 1.1,
                "seed": 9,
                "max_tokens": 64,
            },
            "prefix": {
                "length": 8,
                "vote": "first",
                "samples": 1,
                "instruction": "Only the first step.",
                "sample_prompt": "instruction",
            },
            "mixture": {"full_trace_ratio": 0.3, "seed": 1, "full_trace_tries": 5},
            "label_filter": {"enabled": True, "samples": 12, "on_no_correct": "unfiltered"},
            "output": {"dir": "/tmp/elsewhere", "shard_size": 5},
            "publish": {"repo_id": "org/name", "private": True},
        }
    )
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe
    path = _write(tmp_path, recipe.to_yaml())
    assert load_recipe(path)[0] == recipe


def test_sources_get_names_and_the_limit_flag_reaches_each(tmp_path: Path) -> None:
    recipe, _ = load_recipe(
        _write(
            tmp_path,
            """\
            name: mix
            version: 1.0.0
            sources:
              - path: ../data/gsm8k-test.jsonl
                limit: 100
              - hub: ChilleD/SVAMP
                split: test
                streaming: true
              - hub: AI-MO/NuminaMath-1.5
                name: numina
            """,
        )
    )
    assert recipe.source is None and recipe.sources is not None
    assert [s.name for s in recipe.question_sources] == ["gsm8k-test", "SVAMP", "numina"]
    assert [f for f, _ in recipe.source_fields()] == ["sources.0", "sources.1", "sources.2"]
    limited = apply_overrides(recipe, limit=5)
    assert [s.limit for s in limited.question_sources] == [5, 5, 5]
    # The resolved recipe names every source and writes only the form the recipe used.
    data = yaml.safe_load(recipe.to_yaml())
    assert "source" not in data and [s["name"] for s in data["sources"]] == [
        "gsm8k-test",
        "SVAMP",
        "numina",
    ]
    assert SourceConfig(hub="AI-MO/NuminaMath-1.5").name == "NuminaMath-1.5"
    assert SourceConfig(path="my data/set 1.csv").name == "set-1"


def test_one_source_or_a_list_of_one_is_the_same_build(tmp_path: Path) -> None:
    from builder.manifest import fingerprint

    one = parse_recipe(yaml.safe_load(GOOD))
    data = yaml.safe_load(GOOD)
    data["sources"] = [data.pop("source")]
    listed = parse_recipe(data)
    info = [{"type": "file", "sha256": "0" * 64}]
    assert fingerprint(one, info, None) == fingerprint(listed, info, None)
    shuffled = parse_recipe({**data, "sources": [{**data["sources"][0], "shuffle": True}]})
    assert fingerprint(shuffled, info, None) != fingerprint(listed, info, None)
