"""upft-eval: measure what a UPFT model gained and what it kept, and put it in its model card.

The ``upft-eval`` command (``upft.evaluation.cli``) reads top to bottom through the modules:
``config`` (strict eval settings: defaults < YAML file < flags) -> ``benchmarks`` (named
benchmarks -> a question source) -> ``runner`` (questions -> prompts -> the builder's executors:
one engine here, or engine replicas on Ray; shard by shard, resumable) -> ``scoring``
(math-verify verdicts and the statistics: accuracy with its confidence interval, pass@k, length,
truncation, prefix behaviour) -> ``report`` (``results.jsonl``, ``summary.json``, ``README.md``,
model-card ``model-index``) and ``compare`` (paired comparison of finished runs, table and plot).
"""
