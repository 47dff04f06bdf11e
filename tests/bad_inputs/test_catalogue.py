"""The bad-input catalogue of ``upft-build``: every mistake a user can make in a recipe, a source,
a model folder or an output location, each driven through the real command line (click's
CliRunner). Other commands have a catalogue module of their own here (``test_push_to_hub.py``).

Each case gives its input (recipe text, files, flags), a fragment the message must contain and
the exit code: 2 for every error, with ``error: ...`` on stderr, no traceback, and nothing
written into the version directory. A few inputs are *accepted* on purpose (a byte-order mark,
CRLF line ends, some white-space-only questions): those cases expect exit 0 and the count or
plan line that shows how they were read. Most cases are ``--dry-run`` (no model is loaded); the
existing-version case runs a real build up to its fingerprint check with a model folder that
holds only a config, so no engine starts either.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from tests.hubserver import HubServer, configure_process_env

configure_process_env()  # before anything imports huggingface_hub (see tests/hubserver)

from builder.cli import build_main  # noqa: E402

GOOD_ROWS = [
    {"question": "What is 2 + 3?", "answer": "5"},
    {"question": "Half of 18?", "answer": 9},
]
BASE: dict[str, Any] = {
    "name": "bad",
    "version": "1.0.0",
    "source": {"path": "q.jsonl", "question": "question", "answer": "answer"},
    "model": {"id": "embedded:smollm2", "backend": "transformers"},
    "prefix": {"length": 8, "vote": "majority", "samples": 4},
    "output": {"dir": "out"},
}
DROP = object()
FINAL = Path("out") / "bad" / "1.0.0"


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def recipe(**changes: Any) -> str:
    """The base recipe as YAML with dotted-key changes (``DROP`` removes a key)."""
    data = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class Case:
    id: str
    fragments: tuple[str, ...]
    recipe: str | None = None  # None: the base recipe
    files: dict[str, bytes] | None = None  # relative path -> bytes; None: two good rows
    args: tuple[str, ...] = ("--dry-run",)
    exit_code: int = 2
    setup: Callable[[Path], None] | None = None


def _model_folder(tmp: Path, template: bool = True, config: bool = True) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    if config:
        (folder / "config.json").write_text('{"model_type": "llama"}')
    tok: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if template:
        tok["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def _existing_version(tmp: Path) -> None:
    _model_folder(tmp)
    FINAL.mkdir(parents=True)
    (FINAL / "manifest.json").write_text(json.dumps({"fingerprint": "0" * 64}))


def _make_dir(path: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / path).mkdir(parents=True)


def _make_file(path: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text("not a folder\n")

    return setup


CASES = [
    # --- the recipe file ---------------------------------------------------------------------
    Case(
        "yaml-syntax-error",
        ("r.yaml:6: not valid YAML: expected ',' or ']'",),
        recipe="name: bad\nversion: 1.0.0\nsource:\n  path: q.jsonl\n  question: [unclosed\n"
        "model: {}\n",
    ),
    Case(
        "yaml-duplicate-key",
        ("r.yaml:3: key version appears twice (first at line 2)",),
        recipe="name: bad\nversion: 1.0.0\nversion: 2.0.0\nsource: {path: q.jsonl}\n",
    ),
    Case(
        "recipe-not-a-mapping",
        ("a recipe must be a YAML mapping, got list",),
        recipe="- name: bad\n- version: 1.0.0\n",
    ),
    Case("recipe-empty", ("a recipe must be a YAML mapping, got NoneType",), recipe=""),
    Case(
        "recipe-not-utf8",
        ("r.yaml:2: byte 0xe9 at byte offset 20 (column 11 of the line) is not valid UTF-8",),
        setup=lambda tmp: (tmp / "r.yaml").write_bytes(b"name: bad\nname2: caf\xe9\n"),
    ),
    Case("recipe-missing", ("recipe file 'gone.yaml' not found",), args=("gone.yaml",)),
    Case("recipe-is-a-directory", ("is a directory",), args=("adir",), setup=_make_dir("adir")),
    Case(
        "unknown-key-suggests-closest",
        ("prefix.lenght (r.yaml:", "did you mean 'length'?"),
        recipe=recipe(**{"prefix.lenght": 8}),
    ),
    Case(
        "unknown-top-level-key-suggests",
        ("sampling_seed (r.yaml:", "did you mean 'sampling'?"),
        recipe=recipe(sampling_seed=3),
    ),
    Case(
        "unknown-key-no-suggestion",
        ("colour (r.yaml:", "unknown field; remove it"),
        recipe=recipe(colour="red"),
    ),
    Case(
        "wrong-type-integer",
        ("prefix.samples (r.yaml:", "valid integer"),
        recipe=recipe(**{"prefix.samples": "eight"}),
    ),
    Case(
        "wrong-type-number",
        ("sampling.temperature (r.yaml:", "valid number"),
        recipe=recipe(**{"sampling.temperature": [0.6]}),
    ),
    Case("wrong-type-section", ("source (r.yaml:",), recipe=recipe(source="q.jsonl")),
    Case(
        "missing-required-version",
        ("version (r.yaml", "required field is missing"),
        recipe=recipe(version=DROP),
    ),
    Case(
        "samples-zero",
        ("prefix.samples (r.yaml:", "greater than or equal to 1"),
        recipe=recipe(**{"prefix.samples": 0}),
    ),
    Case(
        "samples-negative",
        ("prefix.samples (r.yaml:", "greater than or equal to 1"),
        recipe=recipe(**{"prefix.samples": -3}),
    ),
    Case(
        "length-zero",
        ("prefix.length (r.yaml:", "greater than or equal to 1"),
        recipe=recipe(**{"prefix.length": 0}),
    ),
    Case(
        "length-negative",
        ("prefix.length (r.yaml:", "greater than or equal to 1"),
        recipe=recipe(**{"prefix.length": -8}),
    ),
    Case(
        "ratio-above-one",
        ("mixture.full_trace_ratio (r.yaml:", "less than or equal to 1"),
        recipe=recipe(**{"mixture.full_trace_ratio": 1.5}),
    ),
    Case(
        "ratio-negative",
        ("mixture.full_trace_ratio (r.yaml:", "greater than or equal to 0"),
        recipe=recipe(**{"mixture.full_trace_ratio": -0.1}),
    ),
    Case(
        "majority-with-one-sample",
        ("vote 'majority' needs samples >= 2",),
        recipe=recipe(**{"prefix.samples": 1}),
    ),
    Case(
        "min-agreement-above-one",
        ("prefix.min_agreement (r.yaml:", "less than or equal to 1"),
        recipe=recipe(**{"prefix.min_agreement": 1.5}),
    ),
    Case(
        "min-agreement-negative",
        ("prefix.min_agreement", "greater than or equal to 0"),
        recipe=recipe(**{"prefix.min_agreement": -0.2}),
    ),
    Case(
        "version-not-semver",
        ("version '1.0' is not a semantic version like 1.0.0",),
        recipe=recipe(version="1.0"),
    ),
    Case(
        "version-with-v",
        ("version 'v1.0.0' is not a semantic version",),
        recipe=recipe(version="v1.0.0"),
    ),
    Case(
        "unknown-backend",
        ("model.backend (r.yaml:", "'vllm', 'transformers' or 'openai'"),
        recipe=recipe(**{"model.backend": "tensorrt"}),
    ),
    Case(
        "unknown-backend-flag",
        ("Invalid value for '--backend'",),
        args=("--dry-run", "--backend", "tensorrt"),
    ),
    Case(
        "label-filter-without-answer",
        ("label_filter.enabled needs gold answers",),
        recipe=recipe(
            **{
                "source.answer": DROP,
                "label_filter.enabled": True,
                "prefix.vote": "first",
                "prefix.samples": 1,
            }
        ),
    ),
    Case(
        "hub-and-path",
        ("set exactly one of 'hub'",),
        recipe=recipe(**{"source.hub": "openai/gsm8k"}),
    ),
    Case(
        "source-suffix",
        ("has suffix '.txt'; use .jsonl, .json, .parquet or .csv",),
        recipe=recipe(**{"source.path": "q.txt"}),
    ),
    # --- the source file ---------------------------------------------------------------------
    Case(
        "source-missing", ("source.path 'q.jsonl' not found (looked at {tmp}/q.jsonl)",), files={}
    ),
    Case(
        "source-is-a-directory",
        ("source.path 'q.jsonl' is a directory",),
        files={},
        setup=_make_dir("q.jsonl"),
    ),
    Case(
        "source-empty",
        ("source.path 'q.jsonl': {tmp}/q.jsonl is empty (0 bytes)",),
        files={"q.jsonl": b""},
    ),
    Case(
        "source-non-utf8",
        (
            "{tmp}/q.jsonl:2: byte 0xff at byte offset 61 (column 16 of the "
            "line) is not valid UTF-8",
        ),
        files={"q.jsonl": jsonl(GOOD_ROWS[:1]) + b'{"question": "T\xffo?"}\n'},
    ),
    Case(
        "source-csv-non-utf8",
        ("{tmp}/q.csv:3: byte 0xe9 at byte offset",),
        recipe=recipe(**{"source.path": "q.csv"}),
        files={"q.csv": b"question,answer\nOne?,1\nCaf\xe9?,2\n"},
    ),
    Case(
        "jsonl-line-not-json",
        ("{tmp}/q.jsonl:2: not valid JSON (",),
        files={"q.jsonl": jsonl(GOOD_ROWS[:1]) + b'{"question": "Two?",}\n'},
    ),
    Case(
        "jsonl-line-not-an-object",
        ("{tmp}/q.jsonl:2: expected a JSON object, got ['Two?']",),
        files={"q.jsonl": jsonl([GOOD_ROWS[0], ["Two?"]])},
    ),
    Case(
        "json-not-a-list",
        ("expected a JSON list of objects",),
        recipe=recipe(**{"source.path": "q.json"}),
        files={"q.json": b'{"rows": []}'},
    ),
    Case(
        "parquet-garbage",
        ("q.parquet: cannot read as parquet",),
        recipe=recipe(**{"source.path": "q.parquet"}),
        files={"q.parquet": b"garbage"},
    ),
    Case(
        "question-field-missing",
        (
            "{tmp}/q.jsonl:1: field(s) ['question'] named by "
            "source.question 'question' are missing (row has: answer, "
            "prompt)",
        ),
        files={"q.jsonl": jsonl([{"prompt": "One?", "answer": 1}])},
    ),
    Case(
        "question-null-everywhere",
        ("source yielded no questions (read 2, empty 2",),
        files={
            "q.jsonl": jsonl([{"question": None, "answer": 1}, {"question": None, "answer": 2}])
        },
    ),
    Case(
        "question-a-list",
        ("{tmp}/q.jsonl:2: field 'question' holds a list (['a', 'b']), not text",),
        files={"q.jsonl": jsonl([GOOD_ROWS[0], {"question": ["a", "b"], "answer": 1}])},
    ),
    Case(
        "question-a-number",
        ("{tmp}/q.jsonl:1: field 'question' holds a number (42)",),
        files={"q.jsonl": jsonl([{"question": 42, "answer": 1}])},
    ),
    Case(
        "question-a-dict",
        ("field 'question' holds an object ({'text': 'One?'})",),
        files={"q.jsonl": jsonl([{"question": {"text": "One?"}, "answer": 1}])},
    ),
    Case(
        "template-missing-field",
        (
            "field(s) ['Question'] named by source.question '{Body} "
            "{Question}' are missing (row has: Body, answer)",
        ),
        recipe=recipe(**{"source.question": "{Body} {Question}"}),
        files={"q.jsonl": jsonl([{"Body": "Tom has 3.", "answer": 3}])},
    ),
    Case(
        "only-whitespace-questions",
        ("source yielded no questions (read 3, empty 3",),
        files={"q.jsonl": jsonl([{"question": q, "answer": 1} for q in ("", "  \t", "\n")])},
    ),
    Case(
        "duplicate-ids-different-questions",
        ("id 'a' (field 'id') was already used by {tmp}/q.jsonl:1; ids must be unique",),
        recipe=recipe(**{"source.id": "id"}),
        files={
            "q.jsonl": jsonl(
                [
                    {"question": "One?", "answer": 1, "id": "a"},
                    {"question": "Two?", "answer": 2, "id": "a"},
                ]
            )
        },
    ),
    Case(
        "answer-field-missing",
        ("answer field 'solution' is missing (row has: answer, question)",),
        recipe=recipe(**{"source.answer": "solution"}),
    ),
    Case(
        "answer-pattern-without-a-group",
        ("source.answer_pattern (r.yaml:", "has 0 groups; it needs exactly one group"),
        recipe=recipe(**{"source.answer_pattern": "Answer: \\d+"}),
    ),
    Case(
        "label-filter-gold-answers-all-unparsed",
        (
            "label_filter.enabled: 2 of 2 gold answer(s) in field 'answer' do not parse to "
            "anything comparable",
            "'about 5' (the words 'about' are left next to a number",
        ),
        recipe=recipe(
            **{"label_filter.enabled": True, "prefix.vote": "first", "prefix.samples": 1}
        ),
        files={
            "q.jsonl": jsonl(
                [
                    {"question": "What is 2 + 3?", "answer": "about 5"},
                    {"question": "Half of 18?", "answer": "roughly 9 apples"},
                ]
            )
        },
    ),
    Case(
        "answer-an-object",
        ("answer field 'answer' holds an object ({'value': 5})",),
        files={"q.jsonl": jsonl([{"question": "One?", "answer": {"value": 5}}])},
    ),
    Case(
        "answer-a-boolean",
        ("answer field 'answer' holds a boolean (True)",),
        files={"q.jsonl": jsonl([{"question": "One?", "answer": True}])},
    ),
    # --- accepted on purpose: the plan line shows how the file was read ----------------------
    Case(
        "bom-accepted",
        ("read 2, empty 0, duplicate 0, over limit 0, kept 2",),
        exit_code=0,
        files={"q.jsonl": b"\xef\xbb\xbf" + jsonl(GOOD_ROWS)},
    ),
    Case(
        "crlf-accepted",
        ("read 2, empty 0, duplicate 0, over limit 0, kept 2",),
        exit_code=0,
        files={"q.jsonl": jsonl(GOOD_ROWS).replace(b"\n", b"\r\n")},
    ),
    Case(
        "some-whitespace-questions-skipped",
        ("read 4, empty 2, duplicate 0, over limit 0, kept 2",),
        exit_code=0,
        files={
            "q.jsonl": jsonl([GOOD_ROWS[0], {"question": "  "}, GOOD_ROWS[1], {"question": None}])
        },
    ),
    # --- the model ---------------------------------------------------------------------------
    Case(
        "model-path-missing",
        ("model './models/none' is neither a local folder",),
        recipe=recipe(**{"model.id": "./models/none"}),
    ),
    Case(
        "model-folder-without-config",
        ("exists but has no config.json",),
        recipe=recipe(**{"model.id": "./model"}),
        setup=lambda tmp: _model_folder(tmp, config=False),
    ),
    Case(
        "model-without-chat-template",
        ("model './model' has no chat template", "set model.chat_template"),
        recipe=recipe(**{"model.id": "./model"}),
        setup=lambda tmp: _model_folder(tmp, template=False),
    ),
    # --- the output location -----------------------------------------------------------------
    Case(
        "out-flag-is-a-file",
        ("Invalid value for '--out': Directory 'taken' is a file",),
        args=("--dry-run", "--out", "taken"),
        setup=_make_file("taken"),
    ),
    Case(
        "output-dir-is-a-file",
        ("output path out is a file, not a directory",),
        setup=_make_file("out"),
    ),
    Case(
        "output-name-is-a-file",
        ("output path out/bad is a file, not a directory",),
        setup=_make_file("out/bad"),
    ),
    Case(
        "existing-version-other-fingerprint",
        ("already exists and was built from a different recipe", "pass --force to replace it"),
        recipe=recipe(**{"model.id": "./model"}),
        args=(),
        setup=_existing_version,
    ),
    Case(
        # Questions longer than the context are skipped and counted (tests/builder/
        # test_release.py); when none is left, the build stops before any engine starts.
        "every-question-longer-than-the-model-context",
        (
            "no question fits the model context of 64 tokens (prompt plus 8 sampled tokens)",
            "raise model.max_model_len or use shorter questions",
        ),
        recipe=recipe(**{"model.max_model_len": 64}),
        files={"q.jsonl": jsonl([{"question": "How many pens? " * 20, "answer": "1"}])},
        args=(),
    ),
]


def _tree(path: Path) -> list[tuple[str, bytes]]:
    if not path.exists():
        return []
    return sorted(
        (str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*")
    )


def test_the_catalogue_has_at_least_forty_error_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(1 for c in CASES if c.exit_code == 2) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: HubServer
) -> None:
    monkeypatch.chdir(tmp_path)
    files = {"q.jsonl": jsonl(GOOD_ROWS)} if case.files is None else case.files
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "r.yaml").write_text(
        recipe() if case.recipe is None else case.recipe, encoding="utf-8"
    )
    if case.setup is not None:  # last: it may replace what was written above
        case.setup(tmp_path)
    before = _tree(tmp_path / FINAL)

    args = list(case.args)
    if not args or args[0].startswith("-"):
        args = ["r.yaml", *args]
    result: Result = CliRunner().invoke(build_main, args, prog_name="upft-build")

    out = result.output
    assert result.exit_code == case.exit_code, out
    for fragment in case.fragments:
        assert fragment.replace("{tmp}", str(tmp_path)) in out, out
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    if (
        case.exit_code == 2
        and "Invalid value" not in out
        and "is a directory" not in out.splitlines()[-1]
    ):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, out
    # Nothing half-written: the version directory is absent, or exactly as it was.
    assert _tree(tmp_path / FINAL) == before


def test_unreadable_source(tmp_path: Path) -> None:
    """A source file without read permission. Root reads anything, so when we are root the
    command runs without the capabilities that bypass file permissions (capsh --drop)."""
    (tmp_path / "q.jsonl").write_bytes(jsonl(GOOD_ROWS))
    (tmp_path / "q.jsonl").chmod(0o000)
    (tmp_path / "r.yaml").write_text(recipe(), encoding="utf-8")
    command = [
        sys.executable,
        "-c",
        "import sys; from builder.cli import build_main; "
        "sys.exit(build_main(['r.yaml', '--dry-run', '-q']))",
    ]
    if os.geteuid() == 0:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("running as root without capsh: root bypasses file permissions")
        command = [
            capsh,
            "--drop=cap_dac_override,cap_dac_read_search",
            "--",
            "-c",
            shlex.join(command),
        ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert (
        f"error: source.path 'q.jsonl': cannot read {tmp_path / 'q.jsonl'} (Permission "
        "denied); check its permissions"
    ) in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
