"""Benchmark: ``upft-eval`` against a bare ``vllm.LLM.generate`` on the same prompts.

One process, one engine. The eval arm is ``upft.evaluation.runner.evaluate`` with the engine
injected, on the first K GSM8K test questions from ../shared/data, greedy, with the prefix check
off (the bare arm would not do that extra pass; its cost is printed on its own): it loads and
fingerprints the questions and the model folder, templates the prompts, generates shard by
shard, persists every shard, scores every answer with math-verify in its worker process and
writes results.jsonl, summary.json and README.md. The bare arm is one ``sampler._llm.generate``
call on the same templated prompt ids with the same ``SamplingParams`` and nothing else.

Greedy decoding makes both arms generate the same tokens (the counts are printed). The arms run
in rotated order after a warm-up of each (first-call compilation, the math-verify worker); the
figure is the median of the per-round time ratios eval / bare. Target: <= 1.10.

    python bench/eval_throughput.py            # 64 GSM8K questions, max_tokens 256, 3 rounds
    python bench/eval_throughput.py --quick    # 24 questions, max_tokens 192, 2 rounds
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import SHARED_DATA, header, load, median, vllm_cpu_env


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 questions, 192 tokens, 2 rounds")
    ap.add_argument("--questions", type=int, default=None, help="first K GSM8K test questions")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--compile", default="eager", choices=["auto", "compiled", "eager"])
    args = ap.parse_args(argv)
    k = args.questions or (24 if args.quick else 64)
    max_tokens = args.max_tokens or (192 if args.quick else 256)
    rounds = args.rounds or (2 if args.quick else 3)

    vllm_cpu_env(kv_cache_gib=1)
    logging.basicConfig(level=logging.WARNING)
    header("eval throughput: upft-eval vs bare vLLM generate", [sys.argv[0], *argv])

    from vllm.inputs import TokensPrompt

    from builder.models import resolve_model
    from builder.prompts import encode_prompt, messages
    from builder.sampling import make_sampler
    from upft.evaluation import runner
    from upft.evaluation.config import resolve_config

    data = SHARED_DATA / "gsm8k-test.jsonl"
    work = Path(tempfile.mkdtemp(prefix="upft-bench-eval-"))

    def cfg(out: Path, limit: int) -> Any:
        return resolve_config(
            None,
            {
                "model": args.model,
                "data": str(data),
                "answer": "answer",
                "limit": limit,
                "max_tokens": max_tokens,
                "no_prefix_check": True,
                "compile": args.compile,
                "output": str(out),
            },
        )

    base = cfg(work / "plan", k)
    model = resolve_model(base.model.id, base.model.revision)
    started = time.perf_counter()
    sampler: Any = make_sampler(
        "vllm",
        model.path,
        model.revision,
        base.generation.settings(),
        base.model.engine_options(),
        base.model.chat_template,
    )
    print(f"engine  : vLLM ({args.compile}), loaded in {time.perf_counter() - started:.1f} s")
    questions, *_ = runner.load(base)
    prompts = [
        encode_prompt(sampler.tokenizer, messages(e.question.text, None, None)) for e in questions
    ]
    params = sampler.sampling_params(1, max_tokens)
    print(
        f"work    : {k} GSM8K questions, greedy, max_tokens {max_tokens}, shard_size "
        f"{base.shard_size}, {rounds} timed rounds"
    )

    def run_eval(tag: str, limit: int) -> tuple[float, int, float]:
        t0 = time.perf_counter()
        result = runner.evaluate(cfg(work / tag, limit), quiet=True, sampler=sampler)
        elapsed = time.perf_counter() - t0
        assert result.status == "evaluated"
        tokens = result.summary["mean_answer_tokens"] * result.summary["counts"]["samples"]
        return elapsed, round(tokens), result.summary["timings"].get("scoring", 0.0)

    def run_bare() -> tuple[float, int]:
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        t0 = time.perf_counter()
        outputs = sampler._llm.generate(requests, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)

    try:
        run_eval("warm", 2)  # lazy imports, the math-verify worker
        run_bare()
        rows = []
        for r in range(rounds):
            order = ["eval", "bare"] if r % 2 == 0 else ["bare", "eval"]
            got: dict[str, Any] = {}
            for arm in order:
                got[arm] = run_eval(f"r{r}", k) if arm == "eval" else run_bare()
            (e_time, e_tokens, scoring), (b_time, b_tokens) = got["eval"], got["bare"]
            rows.append((r, order[0], e_time, e_tokens, scoring, b_time, b_tokens))
            print(
                f"round {r}: eval {e_time:.2f} s ({e_tokens} tokens, scoring {scoring:.2f} s),"
                f" bare {b_time:.2f} s ({b_tokens} tokens); ratio {e_time / b_time:.3f}",
                flush=True,
            )
        # the prefix check's own cost, for the record (greedy, L + slack = 40 tokens)
        t0 = time.perf_counter()
        pc = resolve_config(
            None,
            {
                "model": args.model,
                "data": str(data),
                "answer": "answer",
                "limit": k,
                "max_tokens": max_tokens,
                "compile": args.compile,
                "output": str(work / "pc"),
            },
        )
        with_check = runner.evaluate(pc, quiet=True, sampler=sampler)
        pc_time = time.perf_counter() - t0
    finally:
        sampler.close()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"{'round':>5} {'first':>6} {'eval s':>8} {'tokens':>7} {'scoring s':>9} "
        f"{'bare s':>8} {'tokens':>7} {'ratio':>7}"
    )
    for r, first, e_time, e_tokens, scoring, b_time, b_tokens in rows:
        print(
            f"{r:>5} {first:>6} {e_time:>8.2f} {e_tokens:>7} {scoring:>9.2f} {b_time:>8.2f} "
            f"{b_tokens:>7} {e_time / b_time:>7.3f}"
        )
    ratio = median([x[2] / x[5] for x in rows])
    e_med, b_med = median([x[2] for x in rows]), median([x[5] for x in rows])
    tokens = rows[-1][6]
    print()
    print(f"eval : {k / e_med:.2f} questions/s, {rows[-1][3] / e_med:.0f} tokens/s")
    print(f"bare : {k / b_med:.2f} questions/s, {tokens / b_med:.0f} tokens/s")
    print(
        f"with the prefix check (+{k} greedy answers of <= 40 tokens): {pc_time:.2f} s "
        f"({pc_time / e_med:.2f}x the eval without it); accuracy "
        f"{100 * with_check.summary['accuracy']:.1f}%"
    )
    print(f"time ratio eval / bare, median of {len(rows)}: {ratio:.3f}")
    print(f"target  : <= 1.10: {'MET' if ratio <= 1.10 else 'MISSED'}")
    print(f"load at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
