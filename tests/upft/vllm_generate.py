"""Greedy generation with vLLM from a trained model folder, run as a subprocess by the tests.

vLLM starts worker processes, so this file does its work only under ``__main__``. Usage:
``python vllm_generate.py MODEL_DIR PROMPTS_JSON`` where PROMPTS_JSON is a list of chat message
lists; prints one JSON object: ``{"outputs": [{"text", "token_ids", "finish_reason"}, ...]}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(model_dir: str, prompts: Any) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, max_model_len=1024, seed=0, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=24)
    results = llm.chat(prompts, params, use_tqdm=False)
    return {
        "outputs": [
            {
                "text": r.outputs[0].text,
                "token_ids": list(r.outputs[0].token_ids),
                "finish_reason": r.outputs[0].finish_reason,
            }
            for r in results
        ]
    }


if __name__ == "__main__":
    result = main(sys.argv[1], json.loads(sys.argv[2]))
    print("UPFT-RESULT " + json.dumps(result), flush=True)
