"""transformers backend: ``model.generate`` with the same inputs and outputs as vLLM.

The fallback for machines without vLLM. Prompts (token ids) are left-padded into micro-batches
and expanded to ``n`` return sequences each. Cumulative log-probabilities are computed from the
raw logits (before temperature and top-p), which is what vLLM reports by default. Each call is
seeded from the recipe seed and the prompts themselves, so a shard samples the same sequences
whether or not the build was interrupted and resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from builder.cpu import engine_dtype
from builder.errors import SamplingError
from builder.sampling.base import (
    EngineOptions,
    ProgressFn,
    Sample,
    Sampler,
    SamplingSettings,
    seed_for,
)

logger = logging.getLogger(__name__)


class HFSampler(Sampler):
    """Samples with ``transformers``; ``model.dtype: auto`` is bf16 on a CUDA GPU that supports
    it and, on CPU, what the CPU's flags call for (``builder.cpu``)."""

    model: Any
    _tokenizer: Any

    def __init__(
        self,
        model_path: str,
        revision: str | None,
        settings: SamplingSettings,
        engine: EngineOptions,
        chat_template: str | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__(settings)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise SamplingError(
                "backend 'transformers' needs torch and transformers: pip install 'upft[hf]'"
            ) from exc
        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # model.dtype auto: on CPU the CPU's flags decide (builder.cpu); on a GPU bfloat16 where
        # it is supported, else float32.
        self.dtype = engine_dtype(engine.dtype, on_gpu=self.device == "cuda")
        if self.dtype.dtype == "auto":
            use_bf16 = torch.cuda.is_bf16_supported()
            dtype = torch.bfloat16 if use_bf16 else torch.float32
        else:
            dtype = getattr(torch, self.dtype.dtype)
        self._torch_dtype = dtype
        rev = {"revision": revision} if revision else {}
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_path, **rev)
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **rev)
        except Exception as exc:
            raise SamplingError(
                f"transformers could not load {model_path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model.to(self.device).eval()
        if chat_template is not None:
            self._tokenizer.chat_template = chat_template
        self.batch_size = batch_size
        self._pad = self._tokenizer.pad_token_id
        if self._pad is None:
            self._pad = self._tokenizer.eos_token_id

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def engine_info(self) -> dict[str, Any]:
        return {
            "seeding": "per_call",
            "dtype": str(self._torch_dtype).removeprefix("torch."),
            **self.dtype.info(),
        }

    def generation_config(self, n: int, max_tokens: int, stops: list[int]) -> Any:
        """A complete ``GenerationConfig`` built from our settings alone.

        Passing one whole config (rather than keyword overrides) keeps the model's own
        generation_config.json out: a ``repetition_penalty`` or ``top_k`` stored there would
        otherwise apply here but not in vLLM, and the two backends would decode differently.
        """
        from transformers import GenerationConfig

        s = self.settings
        sample = s.temperature > 0
        return GenerationConfig(
            max_new_tokens=max_tokens,
            num_return_sequences=n,
            eos_token_id=stops,
            pad_token_id=self._pad,
            do_sample=sample,
            temperature=s.temperature if sample else 1.0,
            top_p=s.top_p if sample else 1.0,
            top_k=(s.top_k if s.top_k > 0 else 0) if sample else 0,
            repetition_penalty=s.repetition_penalty,
        )

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        torch = self._torch
        s = self.settings
        stops = self.stop_token_ids()
        gen = torch.Generator(device="cpu").manual_seed(seed_for(s.seed, prompts))
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        kwargs: dict[str, Any] = {
            "generation_config": self.generation_config(n, max_tokens, sorted(stops)),
            "return_dict_in_generate": True,
            "output_logits": True,
        }
        results: list[list[Sample]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = [list(p) for p in prompts[start : start + self.batch_size]]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[self._pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            try:
                with torch.no_grad():
                    out = self.model.generate(
                        input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
                    )
            except Exception as exc:
                raise SamplingError(
                    f"transformers generation failed: {type(exc).__name__}: {exc}"
                ) from exc
            new = out.sequences[:, width:].cpu()
            logits = torch.stack(out.logits, dim=1).float().cpu()  # (B*n, T, V)
            logp = torch.log_softmax(logits, dim=-1).gather(2, new.unsqueeze(-1)).squeeze(-1)
            for b in range(len(batch)):
                samples = []
                for j in range(n):
                    row = b * n + j
                    seq = new[row].tolist()
                    cut = next((i for i, t in enumerate(seq) if t in stops), None)
                    kept = seq if cut is None else seq[:cut]
                    scored = len(seq) if cut is None else cut + 1
                    cum = float(logp[row, :scored].sum())
                    text = self._tokenizer.decode(kept, skip_special_tokens=True)
                    samples.append(Sample(kept, text, "stop" if cut is not None else "length", cum))
                results.append(samples)
                if progress is not None:
                    progress(1, sum(len(x.token_ids) for x in samples))
        return results
