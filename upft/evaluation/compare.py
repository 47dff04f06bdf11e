"""``upft-eval compare A B ...``: finished evals side by side, with paired significance.

Reads the ``summary.json`` and ``results.jsonl`` of each run, checked before anything is
computed: a missing field, a damaged line, a duplicated question id or a row count other than
the summary's is one error naming the file, the line and the fix. Runs are only comparable on
the same questions (same ids and texts); anything else is refused, because an accuracy difference
between different question sets says nothing about the models. The first run is the baseline:
every other run gets its accuracy delta, a paired bootstrap 95% interval of that delta
(questions resampled together for both runs) and McNemar's exact p-value on the questions where
exactly one of the two is right. The table also carries the length, truncation, final-answer
and prefix-behaviour columns; :func:`plot` draws accuracy per run with its interval (for cards).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from builder.errors import EvalError
from upft.evaluation import report, scoring

BOOTSTRAP_ITERATIONS = 10000


@dataclass
class Run:
    """One finished eval."""

    path: Path
    summary: dict[str, Any]
    rows: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        """The folder name; ``MODEL/eval/DATA`` (written by --card) shows as ``MODEL/DATA``."""
        if self.path.parent.name == "eval":
            return f"{self.path.parent.parent.name}/{self.path.name}"
        return self.path.name


class _Model(BaseModel):
    spec: str


class _Counts(BaseModel):
    questions: int = Field(ge=0)


class _Prefix(BaseModel):
    stop_within_rate: float | None = None


class _Summary(BaseModel):
    """The part of a ``summary.json`` that compare reads (other keys are left alone)."""

    model: _Model
    counts: _Counts
    accuracy: float
    accuracy_ci95: tuple[float, float]
    mean_answer_tokens: float | None
    truncation_rate: float | None
    final_answer_rate: float | None
    prefix_behaviour: _Prefix | None = None


class _Row(BaseModel):
    """The part of a ``results.jsonl`` row that compare reads."""

    id: str
    question: str
    correct: bool
    n: int = Field(ge=1)
    n_correct: int = Field(ge=0)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
        for err in exc.errors()[:3]
    )


def load_run(path: str | Path) -> Run:
    """A finished eval, checked: every field compare reads is there, ids are unique, and the
    summary counts the questions that results.jsonl holds."""
    folder = Path(path).expanduser()
    summary_path = folder / "summary.json"
    rerun = f"re-run the eval into that folder (upft-eval ... --output {folder} --force)"
    if not folder.is_dir():
        raise EvalError(
            f"eval folder {str(folder)!r} does not exist or is not a folder; pass a folder "
            "that upft-eval wrote (its --output)"
        )
    if not summary_path.is_file():
        raise EvalError(
            f"{str(folder)!r} is not a finished eval (no summary.json); run upft-eval with "
            "--output there first"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        _Summary.model_validate(summary)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"{summary_path}: not valid JSON ({exc}); {rerun}") from None
    except ValidationError as exc:
        raise EvalError(
            f"{summary_path} is not a summary written by upft-eval ({_problems(exc)}); {rerun}"
        ) from None
    rows: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    try:
        found = report.read_rows(folder)
    except UnicodeDecodeError as exc:
        raise EvalError(f"{folder / 'results.jsonl'}: not UTF-8 ({exc}); {rerun}") from None
    for line, row in enumerate(found, start=1):
        try:
            qid = _Row.model_validate(row).id
        except ValidationError as exc:
            raise EvalError(
                f"{folder / 'results.jsonl'}:{line}: not a result row of upft-eval "
                f"({_problems(exc)}); {rerun}"
            ) from None
        if qid in rows:
            raise EvalError(
                f"{folder / 'results.jsonl'}:{line}: question id {qid!r} appears twice (first "
                f"at line {lines[qid]}); {rerun}"
            )
        rows[qid], lines[qid] = row, line
    if len(rows) != summary["counts"]["questions"]:
        raise EvalError(
            f"{folder} holds {len(rows)} result rows but its summary.json counts "
            f"{summary['counts']['questions']} questions: the eval is incomplete or was changed; "
            f"{rerun}"
        )
    return Run(folder, summary, rows)


def check_same_questions(a: Run, b: Run) -> None:
    only_a, only_b = set(a.rows) - set(b.rows), set(b.rows) - set(a.rows)
    if only_a or only_b:
        raise EvalError(
            f"{a.name} and {b.name} were evaluated on different questions ({len(only_a)} only in "
            f"{a.name}, {len(only_b)} only in {b.name}, {len(set(a.rows) & set(b.rows))} shared);"
            " compare runs on the same data, --limit and shuffle settings"
        )
    changed = [q for q in a.rows if a.rows[q]["question"] != b.rows[q]["question"]]
    if changed:
        raise EvalError(
            f"{a.name} and {b.name} share question ids but {len(changed)} question text(s) "
            f"differ (e.g. {changed[0]!r}); compare runs on the same data"
        )


def paired(a: Run, b: Run, seed: int = 0) -> dict[str, Any]:
    """Delta of b over a, its paired bootstrap interval and McNemar's p (same questions)."""
    check_same_questions(a, b)
    ids = sorted(a.rows)
    sa = [scoring.question_score(a.rows[i]) for i in ids]
    sb = [scoring.question_score(b.rows[i]) for i in ids]
    lo, hi = scoring.paired_bootstrap(sa, sb, BOOTSTRAP_ITERATIONS, seed)
    binary = all(a.rows[i]["n"] == 1 and b.rows[i]["n"] == 1 for i in ids)
    p = (
        scoring.mcnemar_p([a.rows[i]["correct"] for i in ids], [b.rows[i]["correct"] for i in ids])
        if binary
        else None
    )
    delta = b.summary["accuracy"] - a.summary["accuracy"]
    return {
        "delta": round(delta, 6),
        "delta_ci95": [round(lo, 6), round(hi, 6)],
        "mcnemar_p": None if p is None else round(p, 4),
    }


def compare(paths: list[str], seed: int = 0) -> dict[str, Any]:
    """The comparison document: one entry per run, deltas against the first."""
    if len(paths) < 2:
        raise EvalError("compare needs at least two eval folders: upft-eval compare A B")
    runs = [load_run(p) for p in paths]
    base = runs[0]
    for other in runs[1:]:
        check_same_questions(base, other)
    entries = []
    for i, run in enumerate(runs):
        s = run.summary
        pb = s.get("prefix_behaviour") or {}
        entry = {
            "run": run.name,
            "path": str(run.path),
            "model": s["model"]["spec"],
            "questions": s["counts"]["questions"],
            "accuracy": s["accuracy"],
            "accuracy_ci95": s["accuracy_ci95"],
            "mean_answer_tokens": s["mean_answer_tokens"],
            "truncation_rate": s["truncation_rate"],
            "final_answer_rate": s["final_answer_rate"],
            "prefix_stop_rate": pb.get("stop_within_rate"),
            "delta": None,
            "delta_ci95": None,
            "mcnemar_p": None,
        }
        if i > 0:
            entry.update(paired(base, run, seed))
        entries.append(entry)
    return {"baseline": base.name, "questions": len(base.rows), "runs": entries}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table (accuracy and deltas in percentage points)."""
    head = (
        "| run | model | accuracy % [95% CI] | delta pts [95% CI] | McNemar p | "
        "mean tokens | truncated % | final answer % | prefix stop % |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for e in result["runs"]:
        lo, hi = e["accuracy_ci95"]
        if e["delta"] is None:
            delta, p = "(baseline)", ""
        else:
            dlo, dhi = e["delta_ci95"]
            delta = f"{100 * e['delta']:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]"
            p = "n/a" if e["mcnemar_p"] is None else f"{e['mcnemar_p']:.4f}"
        lines.append(
            f"| {e['run']} | `{e['model']}` | {_pct(e['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | "
            f"{delta} | {p} | {e['mean_answer_tokens']} | {_pct(e['truncation_rate'])} | "
            f"{_pct(e['final_answer_rate'])} | {_pct(e['prefix_stop_rate'])} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Accuracy per run with its 95% interval, as a PNG (matplotlib on an Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = result["runs"]
    fig = Figure(figsize=(max(4.0, 1.4 * len(runs) + 2), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    acc = [100 * e["accuracy"] for e in runs]
    err = [
        [a - 100 * e["accuracy_ci95"][0] for a, e in zip(acc, runs, strict=True)],
        [100 * e["accuracy_ci95"][1] - a for a, e in zip(acc, runs, strict=True)],
    ]
    ax.bar(range(len(runs)), acc, yerr=err, capsize=6, color="#4C72B0")
    ax.set_xticks(range(len(runs)), [e["run"] for e in runs], rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['questions']} questions, 95% intervals")
    ax.set_ylim(0, max(5.0, max(100 * e["accuracy_ci95"][1] for e in runs) * 1.15))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path
