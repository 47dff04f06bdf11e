"""Open a UPFT dataset and turn its mixture rows into masked training sequences.

Second stage of the trainer, between the config (``upft.config``) and the training run
(``upft.train``). :func:`open_dataset` reads a local version folder or a Hub dataset repo at a
revision (pinned to the resolved commit) and its ``manifest.json`` / ``recipe.yaml``, and
checks what it read before any model loads: a damaged parquet file, a folder without its card,
a config without the mixture's columns, a manifest that does not validate, or fewer rows than
the manifest counts is one error naming the file and the fix.
:func:`encode_rows` turns each row into ``input_ids`` and ``labels``:

* the context is the prompt rendered by the chat template with the generation prompt, tokenised
  on its own -- exactly what the sampling engine fed the model -- and masked with -100;
* the completion content is tokenised on its own (no special tokens), which for a prefix row
  must give back exactly its ``num_tokens`` sampled tokens (checked; TrainError otherwise);
* then what the template writes after an assistant message: the tokens up to and including
  the end-of-turn token are supervised, anything after it (ChatML's newline) is kept in the
  sequence but masked, so a prefix example teaches "these L tokens, then stop" and nothing else.

A full row whose ``finish_reason`` (a mixture column since builds of issue 8; older builds
lack it) is anything but ``"stop"`` hit the token limit: it is left out with a counted warning,
never trained with an end-of-turn token after it, which would teach the model to stop
mid-answer. Leaving it out rather than failing keeps older or foreign datasets trainable; the
count is in the summary and the model card.

Tokenising prompt and completion separately, instead of rendering the whole conversation and
tokenising once, keeps the sampled token ids intact even where a template trims white space or
tokens could merge across the boundary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import TrainError
from builder.hubclient import hub_errors, is_repo_id, with_retries
from builder.manifest import Manifest, ManifestHeader

logger = logging.getLogger(__name__)

KINDS = ("prefix", "full")
IGNORE = -100  # the label value transformers' loss skips
_SENTINEL = "UPFTSENTINEL7x3q"


@dataclass
class DatasetSource:
    """Where the training rows came from, precisely enough to name in the model card."""

    kind: str  # "local" or "hub"
    location: str  # absolute folder path, or repo id
    config: str
    revision: str | None = None  # what the user asked for (Hub only)
    commit: str | None = None  # resolved commit sha (Hub only)
    # The whole typed manifest; None without a manifest.json or for an older builder's schema.
    manifest: Manifest | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    # What identifies the version (name, version, fingerprint, model), read from any manifest.
    header: ManifestHeader = field(default_factory=ManifestHeader)

    @property
    def fingerprint(self) -> str | None:
        return self.header.fingerprint

    @property
    def built_with(self) -> dict[str, Any]:
        """The model the dataset was sampled with (id, revision, name as recorded), or {}."""
        model = self.header.model
        return model.model_dump(exclude_none=True) if model is not None else {}

    @property
    def chat_template(self) -> str | None:
        """A chat template the recipe set for sampling; training must use the same one."""
        model = self.recipe.get("model")
        template = model.get("chat_template") if isinstance(model, dict) else None
        return template if isinstance(template, str) and template else None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "location": self.location,
            "config": self.config,
            "revision": self.revision,
            "commit": self.commit,
            "name": self.header.name,
            "version": self.header.version,
            "fingerprint": self.fingerprint,
            "built_with": self.built_with or None,
        }


def _read_local(folder: Path, name: str) -> str | None:
    path = folder / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _parse_extras(
    manifest: str | None, recipe: str | None, where: str
) -> tuple[Manifest | None, ManifestHeader, dict[str, Any]]:
    """The typed manifest (None for an older builder's), its header, and the recipe as a dict.

    A manifest of a builder from before typed manifests (no ``manifest_version``) still gives
    the header -- name, version, fingerprint and sampling model, all the trainer and its model
    card use -- so training goes on. A header that does not validate, or a typed manifest that
    does not match its schema, is an error naming the file and the field (as for push-to-hub).
    """
    full, header = None, ManifestHeader()
    if manifest:
        name = f"{where}/manifest.json"
        try:
            data = json.loads(manifest)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{name} is not valid JSON ({exc}); rebuild it") from None
        header = ManifestHeader.from_dict(data, name)
        if data.get("manifest_version") is None:
            logger.warning(
                "%s has no manifest_version (written by upft builder %s, before manifests were "
                "typed) -- training goes on, reading only the manifest's name, version, "
                "fingerprint and model",
                name,
                data.get("builder_version", "of an unknown version"),
            )
        else:
            full = Manifest.from_dict(data, name)
    try:
        rec = yaml.safe_load(recipe) if recipe else {}
    except yaml.YAMLError:
        logger.warning("%s/recipe.yaml is not valid YAML; ignoring it", where)
        rec = {}
    return full, header, (rec if isinstance(rec, dict) else {})


# The columns every mixture row needs (``finish_reason`` is optional: older builds lack it).
MIXTURE_COLUMNS = ("question_id", "kind", "prompt", "completion", "num_tokens")


def _check_parquet_files(folder: Path, config: str) -> None:
    """Every parquet file of ``config`` must be whole before ``datasets`` reads it: a file cut
    short (a copy or download that stopped) would end in a ``DatasetGenerationError``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in sorted((folder / "data" / config).glob("*.parquet")):
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException) as exc:
            raise TrainError(
                f"dataset file {str(path)!r} is damaged ({exc}); the version folder is "
                "incomplete: copy or download it again, or rebuild it with upft-build"
            ) from None
        # The card's features would fill a missing column with nulls: name the file instead.
        missing = [c for c in MIXTURE_COLUMNS if c not in names]
        if config == "mixture" and missing:
            raise TrainError(
                f"dataset file {str(path)!r} has no column(s) {', '.join(missing)} (it has: "
                f"{', '.join(names)}); it is not a mixture written by upft-build: rebuild it"
            )


def _check_local_folder(folder: Path) -> None:
    if not (folder / "README.md").is_file():
        raise TrainError(
            f"dataset folder {str(folder)!r} has no README.md, the dataset card whose configs: "
            "tell datasets where the mixture's files are; pass a complete version folder "
            "written by upft-build (data/, README.md, manifest.json)"
        )


def _load_rows(path_or_repo: str, config: str, revision: str | None, where: str) -> Any:
    import datasets
    from datasets.exceptions import DatasetGenerationError, SplitsVerificationError

    try:
        return datasets.load_dataset(path_or_repo, config, revision=revision, split="train")
    except ValueError as exc:
        if "BuilderConfig" in str(exc):
            raise TrainError(
                f"{where} has no dataset config {config!r} ({exc}); pass --dataset-config with "
                "one of the listed configs (UPFT datasets train on 'mixture')"
            ) from None
        raise TrainError(f"cannot read {where}: {exc}") from None
    except FileNotFoundError as exc:
        raise TrainError(
            f"cannot read {where}: {exc}; is it a UPFT version folder written by upft-build "
            "(README.md with configs, data/mixture/*.parquet)?"
        ) from None
    except DatasetGenerationError as exc:
        # datasets names the file in the cause ("Failed to read file '...' with error ...").
        cause = exc.__cause__ or exc.__context__ or exc
        raise TrainError(
            f"cannot read config {config!r} of {where}: {cause}; a data file is damaged or not "
            "parquet: download or copy the dataset again, or rebuild it with upft-build"
        ) from None
    except SplitsVerificationError as exc:
        raise TrainError(
            f"the {config!r} rows of {where} do not match what its card (README.md) records "
            f"({exc}): data files are missing or were changed; download or copy the whole "
            "version folder again, or rebuild it with upft-build"
        ) from None
    except hub_errors() as exc:
        raise TrainError(f"cannot download {where}: {exc}") from None


def _check_rows(rows: Any, config: str, where: str, manifest: Manifest | None) -> None:
    """The rows are a UPFT mixture, and as many as the manifest says were written."""
    missing = [c for c in MIXTURE_COLUMNS if c not in rows.column_names]
    if missing:
        hint = (
            "upft-train reads a UPFT mixture: leave --dataset-config at 'mixture'"
            if config != "mixture"
            else "it is not a mixture written by upft-build; rebuild the dataset"
        )
        raise TrainError(
            f"config {config!r} of {where} has no column(s) {', '.join(missing)} (it has: "
            f"{', '.join(rows.column_names)}); {hint}"
        )
    expected = manifest.counts.mixture_rows if manifest is not None else None
    if config == "mixture" and expected is not None and rows.num_rows != expected:
        raise TrainError(
            f"the mixture of {where} has {rows.num_rows} rows but its manifest.json says "
            f"{expected}: data files are missing or were changed; download or copy the whole "
            "version folder again, or rebuild it with upft-build"
        )


def _hub_error(exc: BaseException, repo: str, revision: str | None) -> TrainError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    if isinstance(exc, RevisionNotFoundError):
        return TrainError(
            f"revision {revision!r} not found in dataset repo {repo!r} on {endpoint}; use a tag "
            "(e.g. v1.0.0), a branch or a commit sha that exists"
        )
    if isinstance(exc, GatedRepoError):
        return TrainError(f"dataset repo {repo!r} is gated; request access on {endpoint} first")
    if isinstance(exc, RepositoryNotFoundError):
        return TrainError(
            f"dataset repo {repo!r} not found on {endpoint}; check the id, or log in "
            "(HF_TOKEN or `hf auth login`) if it is private"
        )
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return TrainError(
            f"not allowed to read dataset repo {repo!r} on {endpoint} (HTTP {status}); set "
            "HF_TOKEN or run `hf auth login` with a token that can read it"
        )
    return TrainError(f"cannot reach dataset repo {repo!r} on {endpoint}: {exc}")


def open_dataset(
    spec: str, revision: str | None, config: str = "mixture"
) -> tuple[Any, DatasetSource]:
    """Load the rows of ``config`` from a local version folder or a Hub repo at ``revision``.

    Returns ``(datasets.Dataset, DatasetSource)``. Hub revisions are resolved to a commit sha
    first and the rows are read at that sha, so the recorded commit is what was trained on.
    """
    folder = Path(spec).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise TrainError(f"dataset {spec!r} is a file; pass the version folder that holds it")
        folder = folder.resolve()
        _check_local_folder(folder)
        manifest, header, recipe = _parse_extras(
            _read_local(folder, "manifest.json"), _read_local(folder, "recipe.yaml"), str(folder)
        )
        _check_parquet_files(folder, config)
        where = f"dataset folder {str(folder)!r}"
        rows = _load_rows(str(folder), config, None, where)
        _check_rows(rows, config, where, manifest)
        if header.fingerprint is None:
            logger.warning(
                "%s has no manifest.json naming a fingerprint; the model card cannot name one",
                folder,
            )
        source = DatasetSource(
            "local", str(folder), config, manifest=manifest, recipe=recipe, header=header
        )
        return rows, source
    if not is_repo_id(spec):
        raise TrainError(
            f"dataset {spec!r} is neither an existing folder nor a Hub repo id (org/name); "
            "pass a version folder written by upft-build or a dataset repo id"
        )
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        sha = with_retries(
            f"reading dataset repo {spec}",
            lambda: HfApi().dataset_info(spec, revision=revision).sha,
            rerun="upft-train",
        )
    except hub_errors() as exc:
        raise _hub_error(exc, spec, revision) from None
    logger.info("dataset %s at %s resolves to commit %s", spec, revision or "main", sha)

    def fetch(name: str) -> str | None:
        try:
            path = hf_hub_download(spec, name, repo_type="dataset", revision=sha)
        except EntryNotFoundError:
            return None
        except hub_errors() as exc:
            raise _hub_error(exc, spec, revision) from None
        return Path(path).read_text(encoding="utf-8")

    manifest, header, recipe = _parse_extras(fetch("manifest.json"), fetch("recipe.yaml"), spec)
    where = f"dataset repo {spec!r} at {sha}"
    rows = _load_rows(spec, config, sha, where)
    _check_rows(rows, config, where, manifest)
    source = DatasetSource("hub", spec, config, revision, sha, manifest, recipe, header)
    return rows, source


# --- tokenisation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnEnd:
    """What the chat template writes after an assistant message's content, as token ids."""

    supervised: tuple[int, ...]  # up to and including the end-of-turn token
    tail: tuple[int, ...]  # written after the end-of-turn token; never trained on
    eot_ids: frozenset[int]


def turn_end(
    tokenizer: Any, eos_token: str | None = None, extra_eos: Iterable[int] = ()
) -> TurnEnd:
    """Find the end-of-turn tokens by rendering an assistant message with a marker content."""
    if eos_token is not None:
        if eos_token not in tokenizer.get_vocab():
            raise TrainError(
                f"eos_token {eos_token!r} is not a token of this tokenizer; leave it unset to use "
                f"the tokenizer's end-of-turn token ({tokenizer.eos_token!r})"
            )
        eot_ids = frozenset({tokenizer.convert_tokens_to_ids(eos_token)})
    else:
        eot_ids = frozenset(i for i in (tokenizer.eos_token_id, *extra_eos) if isinstance(i, int))
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # jinja errors and "no chat template" come as various types
        raise TrainError(f"the tokenizer's chat template cannot render a chat: {exc}") from None
    if _SENTINEL not in text:
        raise TrainError(
            "the chat template does not write assistant messages verbatim, so completion tokens "
            "cannot be located; use a model whose template renders the assistant content as is"
        )
    after = text[text.index(_SENTINEL) + len(_SENTINEL) :]
    ids = list(tokenizer(after, add_special_tokens=False)["input_ids"])
    for i, token in enumerate(ids):
        if token in eot_ids:
            return TurnEnd(tuple(ids[: i + 1]), tuple(ids[i + 1 :]), eot_ids)
    names = [tokenizer.convert_ids_to_tokens(i) for i in sorted(eot_ids)]
    raise TrainError(
        f"the chat template ends an assistant turn with {after!r}, which holds none of the "
        f"end-of-turn tokens {names}; pass --eos-token with the token it uses"
    )


@dataclass
class EncodeStats:
    """Counts by kind, for the log, the summary and the model card."""

    examples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    supervised_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    input_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dropped_too_long: int = 0
    dropped_truncated: int = 0  # full traces that did not end (finish_reason "length")
    full_count_mismatch: int = 0
    # --teacher-prefixes: (question_id, sampled tokens, tokens here) of every trained prefix row
    retokenised: list[tuple[str, int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": {**self.examples, "total": sum(self.examples.values())},
            "supervised_tokens": {
                **self.supervised_tokens,
                "total": sum(self.supervised_tokens.values()),
            },
            # every token the model reads (prompt included): what training time scales with
            "input_tokens": {**self.input_tokens, "total": sum(self.input_tokens.values())},
            "dropped_too_long": self.dropped_too_long,
            "dropped_truncated": self.dropped_truncated,
        }


def _field(row: dict[str, Any], name: str, qid: str) -> Any:
    if name not in row or row[name] is None:
        raise TrainError(f"row {qid!r}: column {name!r} is missing; is this a UPFT mixture?")
    return row[name]


def _messages(value: Any, qid: str, column: str) -> list[dict[str, str]]:
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise TrainError(
            f"row {qid!r}: {column!r} must be a non-empty list of {{role, content}} messages, "
            f"got {value!r:.200}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def encode_row(
    row: dict[str, Any], tokenizer: Any, end: TurnEnd, retokenise: bool = False
) -> dict[str, Any]:
    """One mixture row -> ``{input_ids, labels, kind, question_id, count_matches, ...}``.

    ``retokenise`` (``--teacher-prefixes``): the row was sampled by another model, so its prefix
    text is tokenised with this tokenizer as it is, whatever its sampled token count.
    """
    qid = str(row.get("question_id", "<no question_id>"))
    kind = _field(row, "kind", qid)
    if kind not in KINDS:
        raise TrainError(f"row {qid!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    prompt = _messages(_field(row, "prompt", qid), qid, "prompt")
    completion = _messages(_field(row, "completion", qid), qid, "completion")
    if len(completion) != 1 or completion[0]["role"] != "assistant":
        raise TrainError(
            f"row {qid!r}: 'completion' must be exactly one assistant message, got roles "
            f"{[m['role'] for m in completion]}"
        )
    num_tokens = _field(row, "num_tokens", qid)
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    content_ids = list(tokenizer(completion[0]["content"], add_special_tokens=False)["input_ids"])
    if end.eot_ids.intersection(content_ids):
        raise TrainError(
            f"row {qid!r}: the completion already contains an end-of-turn token; the trainer "
            "adds it, so the dataset must store the content without it"
        )
    if kind == "prefix" and len(content_ids) != num_tokens and not retokenise:
        raise TrainError(
            f"row {qid!r}: the prefix completion re-tokenises to {len(content_ids)} tokens but "
            f"num_tokens is {num_tokens}; the dataset was probably sampled with another "
            "tokenizer -- train the model the dataset was built with (see its manifest), or "
            "pass --teacher-prefixes to train this model on the other model's prefix texts "
            "(not the paper's self-generated setting)"
        )
    input_ids = prompt_ids + content_ids + list(end.supervised) + list(end.tail)
    labels = (
        [IGNORE] * len(prompt_ids) + content_ids + list(end.supervised) + [IGNORE] * len(end.tail)
    )
    return {
        "input_ids": input_ids,
        "labels": labels,
        "kind": kind,
        "question_id": qid,
        "count_matches": len(content_ids) == num_tokens,
        "sampled_tokens": num_tokens,
        "content_tokens": len(content_ids),
    }


def ended(row: dict[str, Any]) -> bool:
    """False for a full row that did not end by itself (no column: older builds, trusted)."""
    reason = row.get("finish_reason")
    return row.get("kind") != "full" or reason is None or reason == "stop"


def encode_rows(
    rows: Iterable[dict[str, Any]],
    tokenizer: Any,
    end: TurnEnd,
    max_length: int,
    retokenise: bool = False,
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Encode every row; rows longer than ``max_length`` are left out (cutting one would drop
    its end-of-turn token and teach the model not to stop), and so are full traces that hit
    the token limit (``finish_reason`` other than ``"stop"``). ``retokenise``: see
    :func:`encode_row`; each prefix row's two token counts go into ``stats.retokenised``."""
    stats = EncodeStats()
    encoded: list[dict[str, list[int]]] = []
    truncated: list[str] = []
    for row in rows:
        if not ended(row):
            stats.dropped_truncated += 1
            truncated.append(f"{row.get('question_id')} ({row.get('finish_reason')})")
            continue
        item = encode_row(row, tokenizer, end, retokenise)
        if len(item["input_ids"]) > max_length:
            stats.dropped_too_long += 1
            logger.debug("leaving out %s: %d tokens", item["question_id"], len(item["input_ids"]))
            continue
        if retokenise and item["kind"] == "prefix":
            stats.retokenised.append(
                (item["question_id"], item["sampled_tokens"], item["content_tokens"])
            )
        elif not item["count_matches"] and not retokenise:
            stats.full_count_mismatch += 1
        stats.examples[item["kind"]] += 1
        stats.supervised_tokens[item["kind"]] += sum(1 for x in item["labels"] if x != IGNORE)
        stats.input_tokens[item["kind"]] += len(item["input_ids"])
        encoded.append({"input_ids": item["input_ids"], "labels": item["labels"]})
    if stats.dropped_too_long:
        logger.warning(
            "left out %d example(s) longer than max_length=%d tokens; raise --max-length to keep "
            "them",
            stats.dropped_too_long,
            max_length,
        )
    if stats.dropped_truncated:
        logger.warning(
            "left out %d full trace(s) that did not end by themselves (finish_reason is not "
            "'stop'): an end-of-turn token after them would teach the model to stop mid-answer; "
            "rows: %s",
            stats.dropped_truncated,
            ", ".join(truncated[:10]) + (", ..." if len(truncated) > 10 else ""),
        )
    if stats.full_count_mismatch:
        logger.warning(
            "%d full trace(s) re-tokenise to a different count than their num_tokens; they are "
            "trained as written",
            stats.full_count_mismatch,
        )
    if not encoded:
        raise TrainError(
            f"no training examples left (rows dropped as longer than max_length={max_length}: "
            f"{stats.dropped_too_long}, full traces that did not end: {stats.dropped_truncated})"
            "; check the dataset or raise --max-length"
        )
    return encoded, stats


@dataclass
class CompletionCollator:
    """Right-pads a batch: input ids with the pad token, labels with -100, attention mask 0."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            step = self.pad_to_multiple_of
            longest = (longest + step - 1) // step * step
        ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
