"""The benchmark registry of ``upft-eval``: names, look-up and its error, the shared data folder.

``get`` is case-insensitive and names every known benchmark (and the other ways to give data)
when a name is unknown; ``shared_data_dir`` follows ``$UPFT_SHARED_DATA`` (with ``~``) and falls
back to ``../shared/data`` beside the repository when the variable is unset or empty;
``local_file`` only accepts a regular file. Each entry's local fields are checked against every
row of its file in ../shared/data, and its stated question count against the file's length.
(Which source a benchmark resolves to, local or Hub, is tested in ``test_config.py``.)
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

from builder.errors import SourceError
from tests.conftest import SHARED_DATA
from upft.evaluation import benchmarks


def test_registry_order_and_known_line() -> None:
    assert list(benchmarks.BENCHMARKS) == ["gsm8k", "math500", "aime24", "svamp"]
    assert benchmarks.known() == "gsm8k, math500, aime24, svamp"
    assert {b.name: b.title for b in benchmarks.BENCHMARKS.values()} == {
        "gsm8k": "GSM8K",
        "math500": "MATH-500",
        "aime24": "AIME 2024",
        "svamp": "SVAMP",
    }


def test_get_ignores_case() -> None:
    assert benchmarks.get("GSM8K") is benchmarks.BENCHMARKS["gsm8k"]
    assert benchmarks.get("Math500").hub == "HuggingFaceH4/MATH-500"
    assert benchmarks.get("AIME24").hub_split == "train"


def test_unknown_name_lists_the_known_ones_and_other_data() -> None:
    with pytest.raises(SourceError) as info:
        benchmarks.get("gsm8k-test")
    assert str(info.value) == (
        "unknown benchmark 'gsm8k-test'; known benchmarks: gsm8k, math500, aime24, svamp "
        "(or pass a .jsonl/.json/.parquet/.csv file, or a Hub dataset id org/name)"
    )
    # `from None`: no KeyError chained under the message the user sees
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_shared_data_dir_follows_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPFT_SHARED_DATA", str(tmp_path / "data"))
    assert benchmarks.shared_data_dir() == tmp_path / "data"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("UPFT_SHARED_DATA", "~/elsewhere")
    assert benchmarks.shared_data_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("value", [None, ""])
def test_shared_data_dir_default_beside_the_repository(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("UPFT_SHARED_DATA", raising=False)
    else:
        monkeypatch.setenv("UPFT_SHARED_DATA", value)  # empty counts as unset
    assert benchmarks.shared_data_dir() == SHARED_DATA


def test_local_file_needs_a_regular_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UPFT_SHARED_DATA", str(tmp_path))
    svamp, gsm8k = benchmarks.get("svamp"), benchmarks.get("gsm8k")
    (tmp_path / "svamp-test.jsonl").write_text('{"ID": "a"}\n')
    (tmp_path / "gsm8k-test.jsonl").mkdir()  # a folder of that name is not the benchmark
    assert benchmarks.local_file(svamp) == tmp_path / "svamp-test.jsonl"
    assert benchmarks.local_file(gsm8k) is None


def _template_fields(question: str) -> list[str]:
    """The row fields a question spec reads: ``{Body} {Question}`` or a plain field name."""
    names = [name for _, name, _, _ in string.Formatter().parse(question) if name]
    return names or [question]


@pytest.mark.parametrize("name", list(benchmarks.BENCHMARKS))
def test_local_fields_exist_in_every_row(name: str) -> None:
    bench = benchmarks.get(name)
    fields = [*_template_fields(bench.local.question), bench.local.answer]
    if bench.local.id is not None:
        fields.append(bench.local.id)
    lines = (SHARED_DATA / bench.file).read_text(encoding="utf-8").splitlines()
    missing = [
        (lineno, field)
        for lineno, line in enumerate(lines, start=1)
        for field in fields
        if json.loads(line).get(field) is None
    ]
    assert missing == []
    # the description's count ("1,319 test questions", "30 problems") is the file's
    stated = re.search(r"([\d,]+) (?:test )?(?:questions|problems)", bench.description)
    assert stated is not None, bench.description
    assert len(lines) == int(stated.group(1).replace(",", ""))


def test_answer_formats_match_the_local_answers() -> None:
    formats = {b.name: b.answer_format for b in benchmarks.BENCHMARKS.values()}
    assert formats == {"gsm8k": "gsm8k", "math500": "latex", "aime24": "latex", "svamp": "number"}
    gsm8k = benchmarks.get("gsm8k")
    with (SHARED_DATA / gsm8k.file).open(encoding="utf-8") as fh:
        solutions = [json.loads(line)[gsm8k.local.answer] for line in fh]
    assert all(re.search(r"\n#### \S", s) for s in solutions)  # gold after ####
    svamp = benchmarks.get("svamp")
    with (SHARED_DATA / svamp.file).open(encoding="utf-8") as fh:
        answers = [json.loads(line)[svamp.local.answer] for line in fh]
    assert {type(a) for a in answers} == {float}  # e.g. 145.0
