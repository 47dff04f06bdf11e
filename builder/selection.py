"""Which questions of a build's sources it keeps, decided with bounded memory.

Part of the source stage: ``builder.question_store.collect`` reads every source once and hands
each question's 16-byte text hash and position here (:class:`HashSpill`); :func:`select` then
applies the rules source by source, in the recipe's order:

1. a question whose normalised text an earlier row of the same source had is a duplicate
   within the source (the first row wins);
2. one whose text a question kept from an earlier source has is a duplicate across sources
   (the first source wins);
3. ids taken from an id field must be unique among the rest (an error names both rows);
4. ``limit`` keeps the first N of the rest in file order, or with ``shuffle`` the N whose
   seeded 64-bit hash of the text (:func:`shuffle_keys`) is smallest, which does not depend on
   the file's order.

Nothing here holds the hashes of a whole source: they are appended to ``BUCKETS`` files by
their first byte and every rule works on one bucket at a time; what spans the build is two
bitmaps, one bit per question (:class:`Bitmap`). The shuffled limit finds its cut with a
histogram of the keys' top 16 bits and then the one bin that holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

BUCKETS = 256
TEXT = np.dtype([("h", "V16"), ("seq", "<u8")])
IDS = np.dtype([("h", "V16"), ("seq", "<u8"), ("loc", "<i8")])
_FLUSH = 1 << 16  # records buffered per spill before they go to their bucket files
_HIST_BITS = 16
_M64 = (1 << 64) - 1


class Bitmap:
    """One bit per question (``seq``), packed: 1 MiB per 8M questions."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.bits = np.zeros((size + 7) // 8, dtype=np.uint8)

    @staticmethod
    def _split(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seq = seq.astype(np.int64, copy=False)
        return seq >> 3, (np.uint8(1) << (seq & 7).astype(np.uint8)).astype(np.uint8)

    def set(self, seq: np.ndarray) -> None:
        byte, mask = self._split(seq)
        np.bitwise_or.at(self.bits, byte, mask)

    def clear(self, seq: np.ndarray) -> None:
        byte, mask = self._split(seq)
        np.bitwise_and.at(self.bits, byte, ~mask)

    def test(self, seq: np.ndarray) -> np.ndarray:
        byte, mask = self._split(seq)
        return (self.bits[byte] & mask) != 0

    def get(self, start: int, stop: int) -> np.ndarray:
        """The bits of ``start..stop-1`` as booleans."""
        first = start >> 3
        bits = np.unpackbits(self.bits[first : (stop + 7) >> 3], bitorder="little")
        return bits[start - 8 * first : stop - 8 * first].astype(bool)

    def count(self, start: int, stop: int, chunk: int = 1 << 20) -> int:
        """How many bits of ``start..stop-1`` are set (a chunk of booleans at a time)."""
        return sum(
            int(self.get(lo, min(lo + chunk, stop)).sum()) for lo in range(start, stop, chunk)
        )

    def put(self, start: int, stop: int, values: np.ndarray) -> None:
        """Overwrite the bits of ``start..stop-1`` (the bits around them are kept)."""
        first, last = start >> 3, (stop + 7) >> 3
        bits = np.unpackbits(self.bits[first:last], bitorder="little")
        bits[start - 8 * first : stop - 8 * first] = values
        self.bits[first:last] = np.packbits(bits, bitorder="little")

    def keep_first(self, start: int, stop: int, count: int, chunk: int = 1 << 20) -> None:
        """Clear every set bit of ``start..stop-1`` after the first ``count``."""
        left = count
        for lo in range(start, stop, chunk):
            hi = min(lo + chunk, stop)
            values = self.get(lo, hi)
            found = int(values.sum())
            if found <= left:
                left -= found
                continue
            if left:
                values[np.flatnonzero(values)[left] :] = False
            else:
                values[:] = False
            left = 0
            self.put(lo, hi, values)


class HashSpill:
    """Append-only bucket files of fixed-size records (text hash, position[, location]) of one
    source: ``<folder>/<prefix>.<bucket>``."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype) -> None:
        self.folder, self.prefix, self.dtype = folder, prefix, dtype
        self._hashes = bytearray()
        self._seq: list[int] = []
        self._loc: list[int] = []
        self._files: dict[int, BinaryIO] = {}

    def path(self, bucket: int) -> Path:
        return self.folder / f"{self.prefix}.{bucket}"

    def add(self, h: bytes, seq: int, loc: int = 0) -> None:
        self._hashes += h
        self._seq.append(seq)
        if self.dtype is IDS:
            self._loc.append(loc)
        if len(self._seq) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if not self._seq:
            return
        recs = np.empty(len(self._seq), dtype=self.dtype)
        recs["h"] = np.frombuffer(bytes(self._hashes), dtype="V16")
        recs["seq"] = self._seq
        if self.dtype is IDS:
            recs["loc"] = self._loc
        bucket = np.frombuffer(bytes(self._hashes), dtype=np.uint8)[::16]
        order = np.argsort(bucket, kind="stable")  # positions stay ascending in each bucket
        recs, bucket = recs[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(BUCKETS + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            fh = self._files.get(int(b))
            if fh is None:
                fh = self._files[int(b)] = self.path(int(b)).open("ab")
            fh.write(recs[bounds[b] : bounds[b + 1]].tobytes())
        self._hashes, self._seq, self._loc = bytearray(), [], []

    def close(self) -> None:
        self.flush()
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def load(self, bucket: int) -> np.ndarray:
        path = self.path(bucket)
        if not path.is_file():
            return np.empty(0, dtype=self.dtype)
        return np.fromfile(path, dtype=self.dtype)


@dataclass
class SourcePlan:
    """What :func:`select` needs of one source: its positions and its rules."""

    start: int  # first position (questions are numbered across sources, in reading order)
    stop: int
    texts: HashSpill
    ids: HashSpill | None  # records of the ids an id field gave (None: hashed ids)
    limit: int | None
    shuffle: bool
    seed: int


@dataclass
class Selected:
    """Per source what the rules dropped; ``kept`` has a bit for every question kept."""

    kept: Bitmap
    duplicate_within: list[int]
    duplicate_across: list[int]
    limited: list[int]


# (source index, location of the first row, location of the repeat): raises
IdClash = Callable[[int, int, int], None]


def select(plans: list[SourcePlan], on_id_clash: IdClash) -> Selected:
    """Apply the rules to every source in order (see the module docstring)."""
    total = plans[-1].stop if plans else 0
    first, kept = Bitmap(total), Bitmap(total)
    out = Selected(kept, [], [], [])
    for s, plan in enumerate(plans):
        within = across = candidates = 0
        for b in range(BUCKETS):
            recs = plan.texts.load(b)
            if not len(recs):
                continue
            order = np.argsort(recs["h"], kind="stable")
            h, seq = recs["h"][order], recs["seq"][order]
            new = np.ones(len(h), dtype=bool)
            new[1:] = h[1:] != h[:-1]
            within += int(len(h) - new.sum())
            h, seq = h[new], seq[new]
            first.set(seq)
            earlier = [p.texts.load(b) for p in plans[:s]]
            prior = [r["h"][kept.test(r["seq"])] for r in earlier if len(r)]
            repeat = np.isin(h, np.concatenate(prior)) if prior else np.zeros(len(h), bool)
            across += int(repeat.sum())
            kept.set(seq[~repeat])
            candidates += int(len(h) - repeat.sum())
        if plan.ids is not None:
            _check_ids(s, plan.ids, first, on_id_clash)
        limited = 0
        if plan.limit is not None and candidates > plan.limit:
            limited = candidates - plan.limit
            if plan.shuffle:
                _keep_smallest_keys(plan, kept, plan.limit)
            else:
                kept.keep_first(plan.start, plan.stop, plan.limit)
        out.duplicate_within.append(within)
        out.duplicate_across.append(across)
        out.limited.append(limited)
    return out


def _check_ids(source: int, ids: HashSpill, first: Bitmap, on_clash: IdClash) -> None:
    """Ids must be unique among the rows that are not duplicates of an earlier row's text; the
    clash reported is the one whose repeat comes first in the file."""
    clash: tuple[int, int, int] | None = None  # (position of the repeat, loc first, loc repeat)
    for b in range(BUCKETS):
        recs = ids.load(b)
        recs = recs[first.test(recs["seq"])] if len(recs) else recs
        if len(recs) < 2:
            continue
        recs = recs[np.argsort(recs["h"], kind="stable")]
        same = np.flatnonzero(recs["h"][1:] == recs["h"][:-1]) + 1
        for i in same:  # recs[i] repeats the id of the group's first row
            j = i - 1
            while j > 0 and recs["h"][j - 1] == recs["h"][i]:
                j -= 1
            found = (int(recs["seq"][i]), int(recs["loc"][j]), int(recs["loc"][i]))
            if clash is None or found < clash:
                clash = found
    if clash is not None:
        on_clash(source, clash[1], clash[2])


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shuffle_keys(h: np.ndarray, seed: int) -> np.ndarray:
    """The seeded 64-bit key of each text hash (``V16``): the order of a shuffled source."""
    words = np.ascontiguousarray(h).view(">u8").reshape(-1, 2).astype(np.uint64)
    salt = np.uint64(seed & _M64)
    with np.errstate(over="ignore"):
        return _mix(_mix(words[:, 0] ^ _mix(np.full(len(words), salt))) ^ words[:, 1])


def sort_order(keys: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Indices that sort by key, then by text hash (distinct within a source)."""
    words = np.ascontiguousarray(h).view(">u8").reshape(-1, 2).astype(np.uint64)
    return np.lexsort((words[:, 1], words[:, 0], keys))


def _keep_smallest_keys(plan: SourcePlan, kept: Bitmap, count: int) -> None:
    """Keep the ``count`` kept questions of a source with the smallest keys; clear the rest."""
    shift = np.uint64(64 - _HIST_BITS)
    hist = np.zeros(1 << _HIST_BITS, dtype=np.int64)
    for b in range(BUCKETS):
        recs = plan.texts.load(b)
        recs = recs[kept.test(recs["seq"])] if len(recs) else recs
        if len(recs):
            bins = (shuffle_keys(recs["h"], plan.seed) >> shift).astype(np.int64)
            hist += np.bincount(bins, minlength=len(hist))
    cum = np.cumsum(hist)
    cut = int(np.searchsorted(cum, count))  # the bin where the count-th key lies
    take = count - (int(cum[cut - 1]) if cut else 0)
    in_cut: list[np.ndarray] = []
    for b in range(BUCKETS):
        recs = plan.texts.load(b)
        recs = recs[kept.test(recs["seq"])] if len(recs) else recs
        if not len(recs):
            continue
        bins = (shuffle_keys(recs["h"], plan.seed) >> shift).astype(np.int64)
        kept.clear(recs["seq"][bins > cut])
        in_cut.append(recs[bins == cut])
    tied = np.concatenate(in_cut) if in_cut else np.empty(0, dtype=TEXT)
    order = sort_order(shuffle_keys(tied["h"], plan.seed), tied["h"])
    kept.clear(tied["seq"][order[take:]])
