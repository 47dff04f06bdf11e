"""A build's questions on disk: read from every source once, kept by the rules, iterated in order.

The source stage's last step, and what every later stage reads its questions from.
:func:`collect` reads each source row by row (``builder.source_files``, ``builder.sources``),
spills the questions to an Arrow file and their text hashes to ``builder.selection``'s bucket
files, lets :func:`builder.selection.select` decide which it keeps, and writes those, in build
order, to ``questions.arrow`` (one record batch of :data:`BATCH` questions at a time): sources
in the recipe's order, each in file order or, when shuffled, by its seeded key. A shuffled
source is put in key order through range partitions of its keys, each sorted on its own.

:class:`QuestionStore` is the narrow interface the pipeline sees: ``count``, iteration in build
order (one batch in memory), ``ids()``, and ``without(ids)`` for the questions a build skips.
A build keeps its store in its staging folder (``<staging>/source/``), where a resumed build
finds it instead of reading the sources again; ``--dry-run`` keeps nothing but the counts, or
(for its gold-answer audit) the store in a temporary folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from builder.errors import SourceError
from builder.manifest_schema import SourceCounts
from builder.selection import IDS, TEXT, HashSpill, SourcePlan, select, shuffle_keys, sort_order
from builder.source_files import OpenedSource
from builder.sources import Question, row_id, row_question

logger = logging.getLogger(__name__)

BATCH = 4096  # questions per record batch: what iteration holds in memory
STORE = "questions.arrow"
INDEX = "questions.json"  # written last: a store without it is incomplete
FORMAT = 1
_PART_ROWS = 16_384  # questions per key range of a shuffled source (sorted in memory)
_MAX_PARTS = 512  # open files while a shuffled source is partitioned
_IPC = pa.ipc.IpcWriteOptions(compression="lz4")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("answer", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("source", pa.uint16()),
        ("h", pa.binary(16)),
    ]
)


class QuestionStore:
    """The questions of a build in build order, read back one batch at a time."""

    def __init__(self, path: Path, names: list[str], count: int) -> None:
        self.path, self.names, self.count = path, names, count

    def __len__(self) -> int:
        return self.count

    def _batches(self, columns: list[str]) -> Iterator[dict[str, list[Any]]]:
        # Plain reads, not a memory map: pages of a mapped file would count as resident.
        with pa.OSFile(str(self.path)) as fh:
            reader = pa.ipc.open_file(fh)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                yield {c: batch.column(c).to_pylist() for c in columns}

    def __iter__(self) -> Iterator[Question]:
        names = self.names
        for cols in self._batches(["id", "text", "answer", "answers", "source"]):
            for qid, text, answer, answers, src in zip(
                cols["id"],
                cols["text"],
                cols["answer"],
                cols["answers"],
                cols["source"],
                strict=True,
            ):
                yield Question(qid, text, answer, tuple(answers), names[src])

    def ids(self) -> Iterator[str]:
        for cols in self._batches(["id"]):
            yield from cols["id"]

    def without(self, skipped: set[str]) -> QuestionView:
        """The questions whose id is not in ``skipped``."""
        return QuestionView(self, skipped)


@dataclass
class QuestionView:
    """A store less some questions (those too long for the model), iterated the same way."""

    store: QuestionStore
    skipped: set[str]

    @property
    def count(self) -> int:
        return self.store.count - len(self.skipped)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Question]:
        return (q for q in self.store if q.id not in self.skipped)

    def ids(self) -> Iterator[str]:
        return (i for i in self.store.ids() if i not in self.skipped)


@dataclass
class Collected:
    """What the source stage found: per source its identity and counts, and the store (None
    for a dry run)."""

    sources: list[OpenedSource]
    counts: list[SourceCounts]
    store: QuestionStore | None = None
    _temp: Path | None = field(default=None, repr=False)

    @property
    def infos(self) -> list[dict[str, Any]]:
        """Per source the manifest's entry, without its counts."""
        return [
            {
                "name": s.name,
                **s.info,
                "question": s.cfg.question,
                "answer_field": s.cfg.answer,
                "id_field": s.cfg.id,
            }
            for s in self.sources
        ]

    def manifest_entries(self) -> list[dict[str, Any]]:
        return [
            {**info, "counts": c.model_dump()}
            for info, c in zip(self.infos, self.counts, strict=True)
        ]

    @property
    def kept(self) -> int:
        return sum(c.kept for c in self.counts)

    def close(self) -> None:
        """Remove a store that lives in a temporary folder (``keep`` without a folder)."""
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)


def collect(
    sources: list[OpenedSource], folder: Path | None = None, keep: bool | None = None
) -> Collected:
    """Read every source, apply the rules and (``keep``) write the kept questions to
    ``<folder>/questions.arrow``; a complete store already in ``folder`` is reused.

    ``keep`` defaults to whether a folder is given; ``keep`` without a folder writes into a
    temporary one that :meth:`Collected.close` removes.
    """
    keep = folder is not None if keep is None else keep
    if folder is not None and (folder / INDEX).is_file():
        found = _reopen(sources, folder)
        if found is not None:
            return found
    temp = None if folder is not None else Path(tempfile.mkdtemp(prefix="upft-source-"))
    home = folder if folder is not None else temp
    assert home is not None
    work = home / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        found = _collect(sources, work, keep)
        if keep:
            _publish(found, home)
            found._temp = temp
    except BaseException:
        shutil.rmtree(temp or work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    if temp is not None and found._temp is None:
        shutil.rmtree(temp, ignore_errors=True)
    return found


def _reopen(sources: list[OpenedSource], folder: Path) -> Collected | None:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        if index.get("format") != FORMAT or index["names"] != [s.name for s in sources]:
            return None
        counts = [SourceCounts.model_validate(c) for c in index["counts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (folder / STORE).is_file():
        return None
    logger.info("questions: reusing the %d read by the interrupted build", index["count"])
    store = QuestionStore(folder / STORE, index["names"], index["count"])
    return Collected(sources, counts, store)


def _publish(found: Collected, home: Path) -> None:
    """Move the finished store into ``home``; its index is written last."""
    assert found.store is not None
    (home / INDEX).unlink(missing_ok=True)
    target = home / STORE
    shutil.move(str(found.store.path), target)
    found.store.path = target
    index = {
        "format": FORMAT,
        "count": found.store.count,
        "names": found.store.names,
        "counts": [c.model_dump() for c in found.counts],
    }
    tmp = home / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index), encoding="utf-8")
    tmp.replace(home / INDEX)


class _Batches:
    """Rows written to an Arrow file in record batches of ``BATCH``: appended one by one
    (:meth:`add`) or as tables (:meth:`write`)."""

    def __init__(self, path: Path, stream: bool = False) -> None:
        self.path = path
        self._sink = pa.OSFile(str(path), "wb")
        new = pa.ipc.new_stream if stream else pa.ipc.new_file
        self._writer = new(self._sink, SCHEMA, options=_IPC)
        self._rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        self._tables: list[pa.Table] = []
        self._held = 0  # rows in _tables
        self.count = 0

    def add(self, q: Question, source: int, h: bytes) -> None:
        rows = self._rows
        rows["id"].append(q.id)
        rows["text"].append(q.text)
        rows["answer"].append(q.answer)
        rows["answers"].append(list(q.answers))
        rows["source"].append(source)
        rows["h"].append(h)
        if len(rows["id"]) >= BATCH:
            self.write(pa.Table.from_pydict(rows, schema=SCHEMA))
            self._rows = {name: [] for name in SCHEMA.names}

    def write(self, table: pa.Table) -> None:
        """Add whole rows (a table of this schema); batches go out as they fill."""
        self._tables.append(table)
        self._held += table.num_rows
        if self._held >= BATCH:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        table = pa.concat_tables(self._tables).combine_chunks()
        full = table.num_rows if final else table.num_rows - table.num_rows % BATCH
        for batch in table.slice(0, full).to_batches(max_chunksize=BATCH):
            self._writer.write_batch(batch)
            self.count += batch.num_rows
        rest = table.slice(full)
        self._tables, self._held = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self._rows["id"]:
            self.write(pa.Table.from_pydict(self._rows, schema=SCHEMA))
        if self._tables:
            self._emit(final=True)
        self._writer.close()
        self._sink.close()


def _hashes(table: pa.Table) -> np.ndarray:
    """The ``h`` column as a ``V16`` array."""
    col = table.column("h").combine_chunks()
    data = np.frombuffer(col.buffers()[1], dtype="V16")
    return data[col.offset : col.offset + len(col)]


def _collect(sources: list[OpenedSource], work: Path, keep: bool) -> Collected:
    """Read, spill, select and (``keep``) write; see the module docstring."""
    multi = len(sources) > 1
    counts = [SourceCounts.zero() for _ in sources]
    plans: list[SourcePlan] = []
    rows = _Batches(work / "rows.arrow", stream=True) if keep else None
    seq = 0
    try:
        for s, src in enumerate(sources):
            cfg, c = src.cfg, counts[s]
            texts = HashSpill(work, f"t{s}", TEXT)
            ids = HashSpill(work, f"i{s}", IDS) if cfg.id is not None else None
            prefix = f"{src.name}/" if multi else ""
            start = seq
            read = empty = 0
            for loc, row in src.rows():
                read += 1
                got = row_question(cfg, row, src.where(loc), src.field, prefix)
                if got is None:
                    empty += 1
                    continue
                q, h = got
                texts.add(h, seq)
                if ids is not None:
                    ids.add(_id_hash(q.id), seq, loc)
                if rows is not None:
                    rows.add(q, s, h)
                seq += 1
            texts.close()
            if ids is not None:
                ids.close()
            c.read, c.empty = read, empty
            plans.append(SourcePlan(start, seq, texts, ids, cfg.limit, cfg.shuffle, cfg.seed))
    finally:
        if rows is not None:
            rows.close()

    def clash(s: int, first: int, repeat: int) -> None:
        src = sources[s]
        qid = next(
            row_id(src.cfg, row, src.where(loc), src.field)
            for loc, row in src.rows()
            if loc == repeat
        )
        raise SourceError(
            f"{src.where(repeat)}: id {qid!r} (field {src.cfg.id!r}) was already used by "
            f"{src.where(first)}; ids must be unique -- remove {src.field}.id to use hashes of "
            "the questions"
        )

    chosen = select(plans, clash)
    for s, c in enumerate(counts):
        c.duplicate_within = chosen.duplicate_within[s]
        c.duplicate_across = chosen.duplicate_across[s]
        c.limited = chosen.limited[s]
        c.kept = read_kept = chosen.kept.count(plans[s].start, plans[s].stop)
        assert read_kept == (
            c.read - c.empty - c.duplicate_within - c.duplicate_across - c.limited
        ), "internal: source counts do not add up"
    _report(sources, counts)
    found = Collected(sources, counts)
    if keep:
        assert rows is not None
        out = _Batches(work / STORE)
        try:
            _write_kept(rows.path, plans, chosen.kept, [s.cfg.shuffle for s in sources], out, work)
        finally:
            out.close()
        found.store = QuestionStore(out.path, [s.name for s in sources], out.count)
    return found


def _id_hash(qid: str) -> bytes:
    import hashlib

    return hashlib.blake2b(qid.encode("utf-8"), digest_size=16).digest()


def _report(sources: list[OpenedSource], counts: list[SourceCounts]) -> None:
    total = sum(c.kept for c in counts)
    if not total:
        read = sum(c.read for c in counts)
        empty = sum(c.empty for c in counts)
        dup = sum(c.duplicate_within + c.duplicate_across for c in counts)
        what = sources[0].field if len(sources) == 1 else "sources"
        raise SourceError(
            f"{what} yielded no questions (read {read}, empty {empty}, duplicate {dup}); check "
            f"{what if len(sources) == 1 else 'each source'}.question and the file"
        )
    for src, c in zip(sources, counts, strict=True):
        if c.empty:
            logger.warning(
                "%s: %d empty or white-space-only question(s) skipped", src.name, c.empty
            )
        if not c.kept:
            logger.warning("%s (%s) gives no question the build keeps", src.field, src.name)
        logger.info(
            "questions from %s: read %d, empty %d, duplicate %d within / %d of an earlier "
            "source, over limit %d, kept %d",
            src.name,
            c.read,
            c.empty,
            c.duplicate_within,
            c.duplicate_across,
            c.limited,
            c.kept,
        )


def _write_kept(
    rows_path: Path,
    plans: list[SourcePlan],
    kept: Any,
    shuffled: list[bool],
    out: _Batches,
    work: Path,
) -> None:
    """Copy the kept rows into ``out`` in build order (shuffled sources in key order)."""
    with pa.OSFile(str(rows_path)) as fh:
        batches = _slices(pa.ipc.open_stream(fh), [p.stop for p in plans])
        for s, plan in enumerate(plans):
            parts = _Partitions(work, plan, kept) if shuffled[s] else None
            for start, batch in batches(s):
                mask = kept.get(start, start + batch.num_rows)
                if not mask.any():
                    continue
                table = pa.Table.from_batches([batch.filter(pa.array(mask))])
                if parts is None:
                    out.write(table)
                else:
                    parts.add(table)
            if parts is not None:
                parts.drain(out)


def _slices(reader: Any, stops: list[int]) -> Any:
    """A function giving, per source, its (first position, batch) pieces of the row spill."""
    state: dict[str, Any] = {"pending": None, "pos": 0}

    def pieces(source: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        stop = stops[source]
        while state["pos"] < stop:
            batch = state["pending"]
            if batch is None:
                batch = reader.read_next_batch()
            pos = state["pos"]
            take = min(batch.num_rows, stop - pos)
            state["pending"] = batch.slice(take) if take < batch.num_rows else None
            state["pos"] = pos + take
            yield pos, batch.slice(0, take)

    return pieces


class _Partitions:
    """A shuffled source's kept rows, split by their key's top bits into files that are small
    enough to sort one by one: key order is then the file order and each file's sorted rows."""

    def __init__(self, work: Path, plan: SourcePlan, kept: Any) -> None:
        count = kept.count(plan.start, plan.stop)
        parts = 1
        while parts < _MAX_PARTS and parts * _PART_ROWS < count:
            parts *= 2
        self.bits = parts.bit_length() - 1
        self.seed = plan.seed
        self.paths = [work / f"part-{i}.arrow" for i in range(parts)]
        self._writers: dict[int, Any] = {}
        self._held: dict[int, list[pa.Table]] = {}
        self._rows = 0

    def _keys(self, table: pa.Table) -> np.ndarray:
        return shuffle_keys(_hashes(table), self.seed)

    def add(self, table: pa.Table) -> None:
        part = (self._keys(table) >> np.uint64(64 - self.bits)) if self.bits else None
        if part is None:
            self._held.setdefault(0, []).append(table)
        else:
            order = np.argsort(part, kind="stable")
            table, part = table.take(pa.array(order)), part[order]
            bounds = np.searchsorted(part, np.arange(len(self.paths) + 1, dtype=np.uint64))
            for p in np.flatnonzero(np.diff(bounds)):
                piece = table.slice(int(bounds[p]), int(bounds[p + 1] - bounds[p]))
                self._held.setdefault(int(p), []).append(piece)
        self._rows += table.num_rows
        if self._rows >= 4 * BATCH:  # bounded: a few MiB of rows held
            self._flush()

    def _flush(self) -> None:
        for p, tables in self._held.items():
            writer = self._writers.get(p)
            if writer is None:
                writer = self._writers[p] = pa.ipc.new_stream(
                    str(self.paths[p]), SCHEMA, options=_IPC
                )
            writer.write_table(pa.concat_tables(tables))
        self._held, self._rows = {}, 0

    def drain(self, out: _Batches) -> None:
        """Write every partition, sorted by key, to ``out`` and delete it."""
        self._flush()
        for writer in self._writers.values():
            writer.close()
        for p, path in enumerate(self.paths):
            if p not in self._writers:
                continue
            with pa.OSFile(str(path)) as fh:
                table = pa.ipc.open_stream(fh).read_all()
            h = _hashes(table)
            out.write(table.take(pa.array(sort_order(shuffle_keys(h, self.seed), h))))
            path.unlink()
