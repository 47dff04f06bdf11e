"""The bad-input catalogue of the trainer and the evaluator: ``upft-train``, ``upft-eval`` and
``upft-eval compare`` given damaged or wrong inputs, through the real command line (click's
CliRunner).

Same contract as the catalogues of ``upft-build`` (``test_catalogue.py``) and ``push-to-hub``
(``test_push_to_hub.py``): exit code 2, one ``error: ...`` line naming the file or value and
the fix, no traceback. The inputs are real: a version folder written by ``upft-build``'s
pipeline (with the scripted sampler of ``tests/fakes.py``) and evals written by the eval runner
(with its scripted sampler), each made once per module and copied into every case before it
is damaged. Every case fails before a model loads; a trained model or a finished eval never
appears in the output folder. A few cases are *accepted* on purpose (exit 0): they show that
the undamaged inputs work.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner


@dataclass(frozen=True)
class Case:
    id: str  # starts with the command: train-..., eval-..., compare-... (args start "compare")
    fragments: tuple[str, ...]  # each must appear in the output ({tmp}: the test folder)
    args: tuple[str, ...]
    setup: Callable[[Path], None] | None = None  # writes (and damages) inputs in tmp
    files: dict[str, bytes] | None = None  # relative path -> bytes; None: q.jsonl, two rows
    exit_code: int = 2

    @property
    def command(self) -> str:
        return self.id.split("-")[0]


GOOD_ROWS = (
    b'{"question": "What is 2 + 3?", "answer": "5"}\n{"question": "Half of 18?", "answer": 9}\n'
)
SOURCES: dict[str, Path] = {}  # made once per module by the ``sources`` fixture
DS = "ds"  # the version folder of a train case, in its working directory
MIXTURE = Path(DS) / "data" / "mixture" / "train-00000-of-00001.parquet"
# What a finished run or eval leaves: none of it may appear after an error.
FINISHED = ("config.json", "model.safetensors", "train_summary.json", "summary.json")


@pytest.fixture(scope="module", autouse=True)
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A version folder built by the real pipeline, and two real evals of the same questions."""
    from builder.pipeline import build
    from builder.recipe import parse_recipe
    from tests.fakes import FakeSampler, fake_model_dir
    from tests.upft.evaluation.test_runner import fake, make_cfg
    from upft.evaluation import runner

    root = tmp_path_factory.mktemp("sources")
    fake_model_dir(root)
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": 2 * i} for i in range(8)]
    (root / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = parse_recipe(
        {
            "name": "demo-upft",
            "version": "0.1.0",
            "source": {"path": "q.jsonl", "answer": "answer", "id": "id"},
            "model": {"id": str(root / "fake-model"), "backend": "transformers"},
            "prefix": {"length": 8},
            "mixture": {"full_trace_ratio": 0.25},
            "output": {"dir": str(root / "out")},
        }
    )
    build(recipe, root, quiet=True, sampler=FakeSampler(lambda text, j, seed: "Add them: 4."))
    SOURCES["version"] = root / "out" / "demo-upft" / "0.1.0"
    stand_in = root / "stand-in-model"
    stand_in.mkdir()
    (stand_in / "config.json").write_text('{"model_type": "llama"}\n')
    for name, right in (("eval-a", 1), ("eval-b", 3)):
        runner.evaluate(make_cfg(stand_in, root / name), quiet=True, sampler=fake(right=right))
        SOURCES[name] = root / name
    yield
    SOURCES.clear()


def _steps(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in steps:
            step(tmp)

    return setup


def _version(tmp: Path) -> None:
    shutil.copytree(SOURCES["version"], tmp / DS)


def _evals(tmp: Path) -> None:
    for name in ("eval-a", "eval-b"):
        shutil.copytree(SOURCES[name], tmp / name)


def _write(path: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            (tmp / path).write_text(data, encoding="utf-8")
        else:
            (tmp / path).write_bytes(data)

    return setup


def _cut(path: str | Path, keep: int) -> Callable[[Path], None]:
    """The file cut to its first ``keep`` bytes, as a copy or download that stopped."""
    return lambda tmp: (tmp / path).write_bytes((tmp / path).read_bytes()[:keep])


def _remove(path: str | Path) -> Callable[[Path], None]:
    return lambda tmp: (tmp / path).unlink()


def _mixture_edit(edit: Callable[[object], object]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        table = pq.read_table(tmp / MIXTURE)
        pq.write_table(edit(table), tmp / MIXTURE)  # type: ignore[arg-type]

    return setup


def _manifest_edit(**changes: object) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / DS / "manifest.json"
        data = json.loads(path.read_text())
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[last] = value
        path.write_text(json.dumps(data))

    return setup


def _results_edit(name: str, edit: Callable[[list[dict]], list[dict]]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name / "results.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))

    return setup


def _summary_edit(name: str, **changes: object) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name / "summary.json"
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value
        path.write_text(json.dumps(data))

    return setup


def _model(config: bool = True, tokenizer: bool = True) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        folder = tmp / "model"
        folder.mkdir()
        if config:
            (folder / "config.json").write_text('{"model_type": "llama"}')
        if tokenizer:
            (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "Nope"}')

    return setup


def train(*args: str, setup: Callable[[Path], None] | None = _version) -> dict[str, Any]:
    return {"args": ("--dataset", DS, "--output", "run", *args), "setup": setup}


def evaluate(*args: str, **kwargs: Any) -> dict[str, Any]:
    return {"args": args, **kwargs}


def compare(*damage: Callable[[Path], None], args: tuple[str, ...] = ()) -> dict[str, Any]:
    """``upft-eval compare eval-a eval-b`` after ``damage`` to the copies of the two evals."""
    return {"args": ("compare", "eval-a", "eval-b", *args), "setup": _steps(_evals, *damage)}


DATA = ("--data", "q.jsonl", "--answer", "answer", "--backend", "transformers")

CASES = [
    # --- upft-train: the dataset folder ------------------------------------------------------
    Case(
        "train-parquet-truncated",
        (
            f"dataset file '{{tmp}}/{MIXTURE}' is damaged (Parquet magic bytes not found in "
            "footer.",
            "copy or download it again, or rebuild it with upft-build",
        ),
        **train(setup=_steps(_version, _cut(MIXTURE, 600))),
    ),
    Case(
        "train-parquet-empty",
        (f"dataset file '{{tmp}}/{MIXTURE}' is damaged (Parquet file size is 0 bytes)",),
        **train(setup=_steps(_version, _cut(MIXTURE, 0))),
    ),
    Case(
        "train-parquet-missing",
        ("cannot read dataset folder '{tmp}/ds'", "data/mixture/*.parquet"),
        **train(setup=_steps(_version, _remove(MIXTURE))),
    ),
    Case(
        "train-parquet-not-a-mixture",
        (
            f"dataset file '{{tmp}}/{MIXTURE}' has no column(s) prompt, completion (it has: "
            "question_id, source, kind, num_tokens",
        ),
        **train(setup=_steps(_version, _mixture_edit(lambda t: t.drop(["prompt", "completion"])))),
    ),
    Case(
        "train-rows-missing",
        (
            "the 'mixture' rows of dataset folder '{tmp}/ds' do not match what its card "
            "(README.md) records",
            "num_examples=7",
            "data files are missing or were changed",
        ),
        **train(setup=_steps(_version, _mixture_edit(lambda t: t.slice(0, 7)))),
    ),
    Case(
        "train-config-name-wrong",
        ("has no dataset config 'mixtur'", "pass --dataset-config with one of the listed"),
        **train("--dataset-config", "mixtur"),
    ),
    Case(
        "train-config-not-a-mixture",
        (
            "config 'prefixes' of dataset folder '{tmp}/ds' has no column(s) kind, prompt, "
            "completion, num_tokens",
            "upft-train reads a UPFT mixture: leave --dataset-config at 'mixture'",
        ),
        **train("--dataset-config", "prefixes"),
    ),
    Case(
        "train-no-card",
        ("dataset folder '{tmp}/ds' has no README.md", "a complete version folder"),
        **train(setup=_steps(_version, _remove(Path(DS) / "README.md"))),
    ),
    Case(
        "train-manifest-not-json",
        ("{tmp}/ds/manifest.json is not valid JSON",),
        **train(setup=_steps(_version, _write(f"{DS}/manifest.json", '{"name": '))),
    ),
    Case(
        "train-manifest-does-not-validate",
        (
            "{tmp}/ds/manifest.json does not match the manifest schema: counts.questions: "
            "Input should be a valid integer",
            "rebuild the dataset version",
        ),
        **train(setup=_steps(_version, _manifest_edit(**{"counts.questions": "many"}))),
    ),
    Case(
        "train-manifest-identity-broken",
        ("{tmp}/ds/manifest.json: name: Input should be a valid string",),
        **train(setup=_steps(_version, _manifest_edit(name=3))),
    ),
    Case(
        "train-dataset-missing",
        ("dataset 'nowhere' is neither an existing folder nor a Hub repo id",),
        args=("--dataset", "nowhere", "--output", "run"),
    ),
    Case(
        "train-dataset-is-a-file",
        ("dataset 'q.jsonl' is a file; pass the version folder",),
        args=("--dataset", "q.jsonl", "--output", "run"),
    ),
    # --- upft-train: settings, output and model ----------------------------------------------
    Case(
        "train-bad-number",
        ("learning_rate = 'fast' (from --learning-rate) is not a number",),
        **train("--learning-rate", "fast"),
    ),
    Case(
        "train-config-file-typo",
        ("unknown setting 'epoch' (from t.yaml:1); did you mean 'epochs'?",),
        args=("--config", "t.yaml"),
        setup=_write("t.yaml", "epoch: 2\ndataset: ds\noutput: run\n"),
    ),
    Case(
        "train-revision-of-a-local-folder",
        ("revision = 'v1.0.0' (from --revision) only applies to Hub datasets",),
        **train("--revision", "v1.0.0"),
    ),
    Case(
        "train-output-is-a-file",
        ("output 'q.jsonl' is a file; pass a folder path with --output",),
        args=("--dataset", DS, "--output", "q.jsonl"),
        setup=_version,
    ),
    Case(
        "train-resume-without-checkpoint",
        ("--resume: no checkpoint in", "Start the run without --resume"),
        **train("--resume"),
    ),
    Case(
        "train-model-folder-missing",
        ("model './none' is neither a local folder",),
        **train("--model", "./none"),
    ),
    Case(
        "train-model-without-config",
        ("model path './model' exists but has no config.json",),
        **train("--model", "./model", setup=_steps(_version, _model(config=False))),
    ),
    Case(
        "train-model-without-tokenizer",
        ("model folder './model' has no tokenizer (none of tokenizer.json",),
        **train("--model", "./model", setup=_steps(_version, _model(tokenizer=False))),
    ),
    Case(
        "train-eval-config-missing",
        ("eval = 'e.yaml' (from --eval) is not a file",),
        **train("--eval", "e.yaml"),
    ),
    Case(
        "train-eval-base-missing",
        ("eval folder '{tmp}/nobase' does not exist",),
        **train(
            "--eval",
            "e.yaml",
            setup=_steps(_version, _write("e.yaml", "data: {benchmark: gsm8k}\nbase: nobase\n")),
        ),
    ),
    # --- upft-eval ---------------------------------------------------------------------------
    Case(
        "eval-model-folder-missing",
        ("model './none' is neither a local folder",),
        **evaluate("--model", "./none", *DATA, "-o", "e"),
    ),
    Case(
        "eval-model-without-config",
        ("model path './model' exists but has no config.json",),
        **evaluate("--model", "./model", *DATA, "-o", "e", setup=_model(config=False)),
    ),
    Case(
        "eval-data-missing",
        ("data file 'none.jsonl' not found; pass an existing .jsonl/.json/.parquet/.csv file",),
        **evaluate("--data", "none.jsonl", "--answer", "answer", "-o", "e"),
    ),
    Case(
        "eval-data-parquet-truncated",
        ("q.parquet: cannot read as parquet",),
        **evaluate("--data", "q.parquet", "--answer", "answer", "-o", "e"),
        files={"q.parquet": b"PAR1garbage"},
    ),
    Case(
        "eval-answer-field-missing",
        ("answer field 'solution' is missing (row has: answer, question)",),
        **evaluate("--data", "q.jsonl", "--answer", "solution", "-o", "e"),
    ),
    Case(
        "eval-question-field-missing",
        ("field(s) ['problem'] named by source.question 'problem' are missing",),
        **evaluate(*DATA, "--question", "problem", "-o", "e"),
    ),
    Case(
        "eval-no-answer-field",
        ("name the gold-answer field with 'answer' (flag --answer)",),
        **evaluate("--data", "q.jsonl", "-o", "e"),
    ),
    Case(
        "eval-unknown-benchmark",
        ("unknown benchmark 'gsm9k'; known benchmarks: gsm8k",),
        **evaluate("--data", "gsm9k", "-o", "e"),
    ),
    Case(
        "eval-output-is-a-file",
        ("output 'q.jsonl' is a file; pass a folder with --output",),
        **evaluate(*DATA, "-o", "q.jsonl"),
    ),
    Case(
        "eval-samples-greedy",
        ("n = 4 samples with temperature 0 would be 4 identical greedy answers",),
        **evaluate(*DATA, "--samples", "4", "-o", "e"),
    ),
    Case(
        "eval-bad-number-flag",
        ("Invalid value for '--temperature': 'hot' is not a valid float",),
        **evaluate(*DATA, "--temperature", "hot", "-o", "e"),
    ),
    Case(
        "eval-config-typo",
        ("generation.max_tokns (e.yaml:2): unknown field; did you mean 'max_tokens'?",),
        **evaluate("--config", "e.yaml"),
        setup=_write(
            "e.yaml", "data: {path: q.jsonl, answer: answer}\ngeneration: {max_tokns: 3}\n"
        ),
    ),
    Case(
        "eval-card-folder-missing",
        ("--card 'nomodel' is not a folder; pass the model folder",),
        **evaluate(*DATA, "--card", "nomodel"),
    ),
    Case(
        "eval-base-missing",
        ("eval folder 'nobase' does not exist or is not a folder",),
        **evaluate(*DATA, "-o", "e", "--base", "nobase"),
    ),
    Case(
        "eval-base-unfinished",
        ("'base' is not a finished eval (no summary.json)",),
        **evaluate(*DATA, "-o", "e", "--base", "base"),
        setup=_write("base/results.jsonl", ""),
    ),
    # --- upft-eval compare -------------------------------------------------------------------
    Case("compare-accepted", ("| eval-a |", "(baseline)", "| eval-b |"), exit_code=0, **compare()),
    Case(
        "compare-other-questions",
        ("eval-a and eval-b were evaluated on different questions (1 only in eval-a, 1 only",),
        **compare(_results_edit("eval-b", lambda rows: [dict(rows[0], id="other"), *rows[1:]])),
    ),
    Case(
        "compare-other-question-texts",
        ("share question ids but 1 question text(s) differ",),
        **compare(_results_edit("eval-b", lambda rows: [dict(rows[0], question="?"), *rows[1:]])),
    ),
    Case(
        "compare-one-folder",
        ("compare needs at least two eval folders",),
        **evaluate("compare", "eval-a", setup=_evals),
    ),
    Case(
        "compare-folder-missing",
        ("eval folder 'nowhere' does not exist or is not a folder",),
        **evaluate("compare", "eval-a", "nowhere", setup=_evals),
    ),
    Case(
        "compare-no-summary",
        ("'eval-b' is not a finished eval (no summary.json)",),
        **compare(_remove("eval-b/summary.json")),
    ),
    Case(
        "compare-summary-truncated",
        ("eval-b/summary.json: not valid JSON", "re-run the eval into that folder"),
        **compare(_cut("eval-b/summary.json", 50)),
    ),
    Case(
        "compare-summary-field-missing",
        ("eval-b/summary.json is not a summary written by upft-eval (accuracy: Field required)",),
        **compare(_summary_edit("eval-b", accuracy=None)),
    ),
    Case(
        "compare-no-results",
        ("eval-b has no results.jsonl; it is not a finished eval",),
        **compare(_remove("eval-b/results.jsonl")),
    ),
    Case(
        "compare-results-truncated",
        ("eval-b/results.jsonl:1: not valid JSON",),
        **compare(_cut("eval-b/results.jsonl", 80)),
    ),
    Case(
        "compare-row-field-missing",
        ("eval-b/results.jsonl:2: not a result row of upft-eval (n_correct: Field required)",),
        **compare(
            _results_edit(
                "eval-b",
                lambda rows: (
                    [rows[0], {k: v for k, v in rows[1].items() if k != "n_correct"}] + rows[2:]
                ),
            )
        ),
    ),
    Case(
        "compare-duplicate-question",
        ("eval-b/results.jsonl:2: question id", "appears twice (first at line 1)"),
        **compare(_results_edit("eval-b", lambda rows: [rows[0], *rows])),
    ),
    Case(
        "compare-rows-missing",
        ("eval-b holds 3 result rows but its summary.json counts 6 questions",),
        **compare(_results_edit("eval-b", lambda rows: rows[:3])),
    ),
    Case(
        "compare-output-is-a-file",
        ("--output 'q.jsonl' is a file; pass a folder for the comparison",),
        **compare(args=("--output", "q.jsonl")),
    ),
]


def _finished(tmp: Path) -> list[str]:
    return sorted(
        str(p.relative_to(tmp))
        for p in tmp.rglob("*")
        if p.name in FINISHED and not p.is_relative_to(tmp / DS)
    )


def _invoke(case: Case) -> Any:
    if case.command == "train":
        from upft.cli import main as train_main

        return CliRunner().invoke(train_main, list(case.args), prog_name="upft-train")
    from upft.evaluation.cli import main as eval_main

    return CliRunner().invoke(eval_main, list(case.args), prog_name="upft-eval")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, data in (case.files or {"q.jsonl": GOOD_ROWS}).items():
        (tmp_path / name).write_bytes(data)
    if case.setup is not None:
        case.setup(tmp_path)
    before = _finished(tmp_path)
    result = _invoke(case)
    out = result.output
    assert result.exit_code == case.exit_code, out
    for fragment in case.fragments:
        assert fragment.replace("{tmp}", str(tmp_path)) in out, out
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    if case.exit_code == 2 and "Invalid value" not in out:
        assert len([x for x in result.stderr.splitlines() if x.startswith("error: ")]) == 1, out
    assert _finished(tmp_path) == before  # no model or eval that looks complete


def test_every_command_has_its_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    counts = {c.id.split("-")[0]: 0 for c in CASES}
    for c in CASES:
        counts[c.id.split("-")[0]] += c.exit_code == 2
    assert counts == {"train": 23, "eval": 15, "compare": 13}


def test_the_damaged_inputs_start_from_valid_ones(tmp_path: Path) -> None:
    """The version folder trains and the evals compare before they are damaged: each case's
    error comes from its damage alone."""
    from upft.data import open_dataset

    _version(tmp_path)
    rows, source = open_dataset(str(tmp_path / DS), None)
    assert rows.num_rows == 8 and source.manifest is not None
    assert source.manifest.counts.mixture_rows == 8
