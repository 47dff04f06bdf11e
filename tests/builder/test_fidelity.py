"""The method's contract on the builder side (issue: faithful UPFT), with the fake sampler:
prefixes sampled with the plain question, full rows only from traces that ended, the paper's
label filter, decoding settings resolved once. Real-engine checks live in test_pipeline.py."""

from __future__ import annotations

import json
import re

import datasets
import pytest

from builder.pipeline import build, plan
from builder.recipe import DEFAULT_INSTRUCTION, parse_recipe
from tests.fakes import FakeSampler, fake_model_dir, question

QUESTIONS = [
    {
        "id": f"q{i}",
        "question": f"Tom has {i} apples and buys {i + 1} more. How many now?",
        "answer": str(2 * i + 1),
    }
    for i in range(10)
]
L = 12


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def recipe(tmp_path, source, **sections):
    data = {
        "name": "fid",
        "version": "1.0.0",
        "source": {"path": str(source), "question": "question", "answer": "answer", "id": "id"},
        "model": {"id": str(fake_model_dir(tmp_path, {"top_p": 0.9})), "backend": "transformers"},
        "sampling": {"max_tokens": 60},
        "prefix": {"length": L},
        "mixture": {"full_trace_ratio": 0.3},
        # One shard per phase: each sampler call is one phase (or one try).
        "output": {"dir": str(tmp_path / "out"), "shard_size": 100},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_recipe(data)


def load(result, config):
    return datasets.load_dataset(str(result.path), config)["train"]


def calls(sampler, max_tokens):
    """The engine calls of one phase (the build may run phase 2 before phase 1)."""
    return [c for c in sampler.calls if c["max_tokens"] == max_tokens]


def echoing(text, j, seed):
    """Echoes the instruction's wording when (and only when) the prompt carries it."""
    if DEFAULT_INSTRUCTION in text:
        return "The first thing you would work out is the apples. Then add."
    return "We add the apples together. That gives the total."


def test_prefixes_are_sampled_with_the_plain_question(tmp_path, source):
    sampler = FakeSampler(echoing)
    result = build(recipe(tmp_path, source), quiet=True, sampler=sampler)
    (phase1,) = calls(sampler, L)
    assert phase1["n"] == 1
    assert all(DEFAULT_INSTRUCTION not in p for call in sampler.calls for p in call["prompts"])
    mixture = load(result, "mixture")
    for row in mixture:
        user = row["prompt"][-1]["content"]
        # Training prompts: the instruction on prefix rows only.
        assert user.endswith(DEFAULT_INSTRUCTION) == (row["kind"] == "prefix")
        if row["kind"] == "prefix":
            assert row["completion"][0]["content"] == "We add the a"  # first L characters
    echo = result.manifest.instruction_echo
    assert echo is not None and echo.sample_prompt == "plain"
    assert (echo.prefix_samples, echo.full_traces) == (0.0, 0.0)
    assert "opening step" in echo.markers and "first thing" in echo.markers
    card = (result.path / "README.md").read_text()
    assert re.search(r"\| sample_prompt +\| `plain` +\|", card)
    assert "prefix samples 0.0%, complete answers 0.0%" in card


def test_instruction_sampling_is_an_explicit_option_and_its_echo_is_measured(tmp_path, source):
    sampler = FakeSampler(echoing)
    # 40 character-tokens: long enough to reach "first thing".
    r = recipe(tmp_path, source, prefix={"sample_prompt": "instruction", "length": 40})
    result = build(r, quiet=True, sampler=sampler)
    assert all(DEFAULT_INSTRUCTION in p for p in calls(sampler, 40)[0]["prompts"])
    # Full traces still get the plain question.
    assert all(DEFAULT_INSTRUCTION not in p for p in calls(sampler, 60)[0]["prompts"])
    echo = result.manifest.instruction_echo
    assert echo is not None and (echo.prefix_samples, echo.full_traces) == (1.0, 0.0)


def test_a_trace_cut_by_max_tokens_is_resampled_never_trained_as_complete(tmp_path, source):
    r = recipe(tmp_path, source)

    def long_first_try(text, j, seed):
        # The first try runs past max_tokens (60); later tries (other seeds) end.
        return "x" * 100 if seed == r.sampling.seed else f"{question(text)[:5]} done."

    sampler = FakeSampler(long_first_try)
    result = build(r, quiet=True, sampler=sampler)
    n_full = round(0.3 * len(QUESTIONS))
    full_calls = calls(sampler, 60)
    assert [len(c["prompts"]) for c in full_calls] == [n_full, n_full]
    assert full_calls[0]["seed"] == r.sampling.seed != full_calls[1]["seed"]
    mixture = load(result, "mixture")
    full = [row for row in mixture if row["kind"] == "full"]
    assert len(full) == n_full
    assert {row["finish_reason"] for row in full} == {"stop"}
    counts = result.manifest.counts
    assert (counts.full_trace_resampled, counts.full_trace_fallback) == (n_full, 0)
    traces = load(result, "traces").filter(lambda t: t["phase"] == "full")
    assert sorted(traces["finish_reason"]) == ["length"] * n_full + ["stop"] * n_full


def test_a_question_whose_traces_never_end_falls_back_to_a_prefix_row(tmp_path, source):
    r = recipe(tmp_path, source, mixture={"full_trace_tries": 2})
    sampler = FakeSampler(lambda text, j, seed: "y" * 100)
    result = build(r, quiet=True, sampler=sampler)
    mixture = load(result, "mixture")
    assert set(mixture["kind"]) == {"prefix"}
    assert set(mixture["finish_reason"]) == {"length"}  # prefixes cut at L
    counts = result.manifest.counts
    assert (counts.full_rows, counts.full_trace_fallback) == (0, 3)
    assert len(sampler.calls) == 1 + 2  # phase 1, then two tries
    assert (
        "3 got a prefix row because none of their tries ended"
        in (result.path / "README.md").read_text()
    )


def _correct_at(index):
    def script(text, j, seed):
        q = question(text)
        a, b = (int(w) for w in q.replace("?", "").split() if w.isdigit())
        # index -1: only even questions get a correct answer (at sample 0).
        right = j == index if index >= 0 else (a % 2 == 0 and j == 0)
        answer = a + b if right else a + b + 100
        return f"We add {a} and {b}. The answer is $\\boxed{{{answer}}}$."

    return script


def test_label_filter_trains_the_first_correct_answers_prefix(tmp_path, source):
    r = recipe(tmp_path, source, label_filter={"enabled": True, "samples": 4})
    sampler = FakeSampler(_correct_at(2))
    result = build(r, quiet=True, sampler=sampler)
    # One phase: K complete answers per question, nothing else sampled.
    assert len(sampler.calls) == 1
    assert (sampler.calls[0]["n"], sampler.calls[0]["max_tokens"]) == (4, 60)
    prefixes = load(result, "prefixes")
    assert set(prefixes["method"]) == {"label_filter"}
    q3 = prefixes.filter(lambda p: p["question_id"] == "q3")[0]
    assert q3["prefix"] == "We add 3 and"[:L]
    mixture = load(result, "mixture")
    full = [row for row in mixture if row["kind"] == "full"]
    assert len(full) == 3 and all("\\boxed{" in f["completion"][0]["content"] for f in full)
    for f in full:  # the verified answer, not sample 0
        n = int(f["question_id"][1:])
        assert f"\\boxed{{{2 * n + 1}}}" in f["completion"][0]["content"]
    m = result.manifest
    assert m.settings.n_samples == 4 and m.settings.label_filter is True
    assert m.accuracy is not None
    assert m.accuracy.model_dump() == {"checked": 40, "correct": 10, "accuracy": 0.25}
    assert m.tokens.full_phase == 0
    card = (result.path / "README.md").read_text()
    assert "not label-free" in card


@pytest.mark.parametrize(
    ("mode", "rows", "dropped", "unfiltered"), [("drop", 5, 5, 0), ("unfiltered", 10, 0, 5)]
)
def test_label_filter_without_a_correct_answer(tmp_path, source, mode, rows, dropped, unfiltered):
    r = recipe(
        tmp_path, source, label_filter={"enabled": True, "samples": 2, "on_no_correct": mode}
    )
    result = build(r, quiet=True, sampler=FakeSampler(_correct_at(-1)))
    counts = result.manifest.counts
    assert counts.mixture_rows == rows
    assert (counts.label_filter_dropped, counts.label_filter_unfiltered) == (dropped, unfiltered)
    kept = set(load(result, "mixture")["question_id"])
    assert kept == (
        {f"q{i}" for i in range(0, 10, 2)} if mode == "drop" else {f"q{i}" for i in range(10)}
    )


def test_label_filter_that_keeps_nothing_is_an_error_not_an_empty_dataset(tmp_path, source):
    from builder.errors import SamplingError

    r = recipe(tmp_path, source, label_filter={"enabled": True, "samples": 2})
    with pytest.raises(SamplingError, match="raise label_filter.samples"):
        build(r, quiet=True, sampler=FakeSampler(_correct_at(99)))
    assert not (tmp_path / "out" / "fid" / "1.0.0").exists()


# A word-problem set that writes its gold answers with units, currency and lists (issue 18.1):
# (question, gold answer as the set writes it, the number a right answer boxes).
UNITS = [
    ("Ann picks 9 apples and eats none. How many apples?", "9 (apples)", "9"),
    ("There are 62 campers in 2 tents. How many campers?", "62 (campers)", "62"),
    ("A pen costs 18.90 dollars. What do 1 pens cost?", "18.90 dollars", "18.9"),
    ("A book costs $18.90. What does it cost?", "\\$18.90", "\\$18.90"),
    ("A bus goes 12 km in 1 hour. How fast?", "12 km/h", "12 km/h"),
    ("A cake needs 2/3 cups of milk. How much milk?", "2/3 (cups)", "\\frac{2}{3}"),
    ("Which odd primes are below 8?", "3,5,7", "7, 5, 3"),
    ("Tom has about 40 marbles. How many?", "about 40", "40"),
]


def _units_source(tmp_path, rows):
    path = tmp_path / "units.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _boxes(right_at):
    by_question = {q: said for q, _, said in UNITS}

    def script(text, j, seed):
        said = by_question[question(text)] if j == right_at else "1000"
        return f"Let us work it out. The answer is $\\boxed{{{said}}}$."

    return script


def test_label_filter_works_on_gold_answers_with_units(tmp_path, caplog):
    rows = [{"id": f"u{i}", "question": q, "answer": gold} for i, (q, gold, _) in enumerate(UNITS)]
    r = recipe(
        tmp_path, _units_source(tmp_path, rows), label_filter={"enabled": True, "samples": 2}
    )
    with caplog.at_level("WARNING"):
        result = build(r, quiet=True, sampler=FakeSampler(_boxes(right_at=1)))
    m = result.manifest
    # Every answer with units, currency or a list verifies at sample 1; sample 0 never does.
    assert m.accuracy is not None
    assert m.accuracy.model_dump() == {"checked": 16, "correct": 7, "accuracy": 0.4375}
    assert (m.counts.label_filter_dropped, m.counts.mixture_rows) == (1, 7)
    kept = set(load(result, "mixture")["question_id"])
    assert kept == {f"u{i}" for i in range(7)}  # "about 40" matches nothing: dropped
    assert m.gold_answers is not None
    assert m.gold_answers.model_dump() == {
        "field": "answer",
        "pattern": None,
        "with_gold": 8,
        "unparsed": 1,
        "examples": [
            {
                "question_id": "u7",
                "answer": "about 40",
                "reason": "the words 'about' are left next to a number after the unit rules",
            }
        ],
    }
    assert any("1 of 8 gold answer(s) in field 'answer'" in m.getMessage() for m in caplog.records)


def test_label_filter_build_stops_before_sampling_when_no_gold_answer_parses(tmp_path):
    from builder.errors import SourceError

    rows = [
        {"id": "a", "question": "Tom has about 40 marbles. How many?", "answer": "about 40"},
        {"id": "b", "question": "How long is the film?", "answer": "2 hours 10 minutes"},
    ]
    r = recipe(
        tmp_path, _units_source(tmp_path, rows), label_filter={"enabled": True, "samples": 2}
    )
    sampler = FakeSampler(_boxes(right_at=0))
    with pytest.raises(SourceError) as info:
        build(r, quiet=True, sampler=sampler)
    assert str(info.value).startswith(
        "label_filter.enabled: 2 of 2 gold answer(s) in field 'answer' do not parse to anything "
        "comparable, so no model answer can match them: a: 'about 40' (the words 'about' are "
        "left next to a number after the unit rules); b: '2 hours 10 minutes'"
    )
    assert sampler.calls == [] and not (tmp_path / "out").exists()  # nothing sampled or written
    with pytest.raises(SourceError, match="label_filter.enabled: 2 of 2 gold answer"):
        plan(r, None)  # --dry-run says so too


def test_answer_pattern_reads_the_gold_answer_for_the_label_filter(tmp_path):
    rows = [
        {"id": f"u{i}", "question": q, "answer": f"Worked out step by step. Answer: {gold}"}
        for i, (q, gold, _) in enumerate(UNITS[:3])
    ]
    source = _units_source(tmp_path, rows)
    from builder.errors import SourceError

    # Without the pattern, the sentences around the answers match nothing.
    r = recipe(tmp_path, source, label_filter={"enabled": True, "samples": 2})
    with pytest.raises(SourceError, match="3 of 3 gold answer"):
        plan(r, None)
    r.source.answer_pattern = "Answer: (.+)"
    result = build(r, quiet=True, sampler=FakeSampler(_boxes(right_at=1)))
    m = result.manifest
    assert m.accuracy is not None and (m.accuracy.checked, m.accuracy.correct) == (6, 3)
    assert m.gold_answers is not None and m.gold_answers.pattern == "Answer: (.+)"
    assert (m.gold_answers.with_gold, m.gold_answers.unparsed) == (3, 0)
    prefixes = load(result, "prefixes")
    assert prefixes["gold_answer"][0] == "Worked out step by step. Answer: 9 (apples)"


def test_label_filter_needs_the_paper_prefix_settings(tmp_path, source):
    from builder.errors import RecipeError

    with pytest.raises(RecipeError, match="leave prefix.vote at 'first'"):
        recipe(
            tmp_path,
            source,
            label_filter={"enabled": True},
            prefix={"vote": "majority", "samples": 4},
        )


def test_decoding_settings_resolve_from_the_generation_config_else_neutral(tmp_path, source):
    r = recipe(tmp_path, source)
    model_dir = fake_model_dir(tmp_path, {"top_p": 0.8, "repetition_penalty": 1.05})
    r = r.model_copy(update={"model": r.model.model_copy(update={"id": str(model_dir)})})
    result = build(r, quiet=True, sampler=FakeSampler(echoing))
    s = result.manifest.settings
    assert (s.top_p, s.top_k, s.repetition_penalty) == (0.8, 0, 1.05)
    assert s.decoding_sources == {
        "top_p": "generation_config",
        "top_k": "neutral",
        "repetition_penalty": "generation_config",
    }
    written = (result.path / "recipe.yaml").read_text()
    assert "repetition_penalty: 1.05" in written


def test_dry_run_plan_counts_every_try_and_the_label_filter(tmp_path, source):
    p = plan(recipe(tmp_path, source), None)
    assert p["prefix_phase"]["token_bound"] == 10 * 1 * L
    assert p["full_phase"]["token_bound"] == 3 * 3 * 60
    lf = plan(recipe(tmp_path, source, label_filter={"enabled": True, "samples": 16}), None)
    assert lf["prefix_phase"]["token_bound"] == 10 * 16 * 60
    assert lf["full_phase"]["token_bound"] == 0
