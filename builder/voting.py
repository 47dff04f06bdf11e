"""Prefix voting on token ids: the ``first`` sample (the paper) or a token-level ``majority``.

Sits between sampling and assembly. Input is a dense array of sampled token ids, one row of
``L`` ids per sample, padded with ``END`` after a sample that stopped early (a stop token is
treated as a token of its own, so samples that all finish at the same place agree). Everything
is vectorised over questions, so voting a million traces is a few numpy passes per depth.

``majority`` walks the samples depth by depth: among the samples that still agree with the walk
it takes the most common next token; ties go to the token whose best supporting sample has the
higher cumulative log-probability, then to the lower token id. The walk always runs to ``L`` so
that the agreement curve (share of samples agreeing with the walk at each depth 1..L) measures
prefix self-consistency; the prefix itself stops where the walk ends (END) or, with
``min_agreement``, before the first depth whose agreeing share falls below it (never before
the first token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

END = -1  # padding id for "this sample had already stopped"


@dataclass
class VoteResult:
    """Votes for Q questions; per-question arrays are indexed by question."""

    walk: np.ndarray  # (Q, L) int64: voted ids per depth, END after the walk ended
    support_by_depth: np.ndarray  # (Q, L) int64: samples agreeing with walk[:d+1]
    lengths: np.ndarray  # (Q,) prefix length k in tokens (<= L)
    support: np.ndarray  # (Q,) samples agreeing with the chosen prefix
    complete: np.ndarray  # (Q,) bool: the prefix is a whole answer (the walk ended there)
    n_samples: int

    @property
    def agreement(self) -> np.ndarray:
        return self.support / self.n_samples

    @property
    def curves(self) -> np.ndarray:
        """(Q, L) share of samples agreeing with the voted walk at depth 1..L."""
        return self.support_by_depth / self.n_samples

    def prefix_ids(self, q: int) -> list[int]:
        return [int(t) for t in self.walk[q, : int(self.lengths[q])]]


def pack(samples: Sequence[Sequence[Sequence[int]]], length: int) -> np.ndarray:
    """Dense (Q, N, L) ids from ragged samples; positions after a sample's end hold END."""
    q, n = len(samples), len(samples[0]) if samples else 0
    out = np.full((q, n, length), END, dtype=np.int64)
    for i, group in enumerate(samples):
        if len(group) != n:
            raise ValueError(f"question {i} has {len(group)} samples, expected {n}")
        for j, ids in enumerate(group):
            m = min(len(ids), length)
            out[i, j, :m] = ids[:m]
    return out


def _majority_walk(tokens: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, n, length = tokens.shape
    active = np.ones((q, n), dtype=bool)
    walk = np.full((q, length), END, dtype=np.int64)
    support = np.zeros((q, length), dtype=np.int64)
    lp = np.where(np.isfinite(logprobs), logprobs, -np.inf).astype(np.float64)
    rows = np.arange(q)
    for d in range(length):
        tok = tokens[:, :, d]
        # same[q, i, j]: sample j is still agreeing and votes for the same token as sample i.
        same = (tok[:, :, None] == tok[:, None, :]) & active[:, None, :]
        counts = np.where(active, same.sum(axis=2), -1)
        best_lp = np.where(same, lp[:, None, :], -np.inf).max(axis=2)
        # lexsort: last key is primary -> count, then best log-prob, then the lower token id.
        order = np.lexsort((-tok, best_lp, counts), axis=-1)
        pick = order[:, -1]
        chosen = tok[rows, pick]
        walk[:, d] = chosen
        support[:, d] = counts[rows, pick]
        active &= tok == chosen[:, None]
    return walk, support


def _first_walk(tokens: np.ndarray, chosen: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    pick = np.zeros(tokens.shape[0], dtype=np.int64) if chosen is None else chosen
    walk = tokens[np.arange(tokens.shape[0]), pick, :].copy()
    agree = np.logical_and.accumulate(tokens == walk[:, None, :], axis=2)
    return walk, agree.sum(axis=1).astype(np.int64)


def vote(
    tokens: np.ndarray,
    logprobs: np.ndarray | None = None,
    method: str = "majority",
    min_agreement: float = 0.0,
    chosen: np.ndarray | None = None,
) -> VoteResult:
    """Vote a prefix per question from (Q, N, L) token ids and (Q, N) cumulative log-probs.

    ``first`` takes sample 0, or the sample ``chosen[q]`` of each question when given (the
    label filter's verified answer); its agreement curve counts the samples that share it.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (questions, samples, depth), got shape {tokens.shape}")
    q, n, length = tokens.shape
    if logprobs is None:
        logprobs = np.zeros((q, n))
    if method == "majority":
        walk, support = _majority_walk(tokens, np.asarray(logprobs, dtype=np.float64))
    elif method == "first":
        walk, support = _first_walk(tokens, chosen)
    else:
        raise ValueError(f"unknown vote method {method!r}; use 'first' or 'majority'")

    depth = np.arange(length)
    is_end = walk == END
    end_pos = np.where(is_end.any(axis=1), is_end.argmax(axis=1), length)
    if method == "majority" and min_agreement > 0:
        low = (support / n < min_agreement) & (depth[None, :] >= 1)
        stop_pos = np.where(low.any(axis=1), low.argmax(axis=1), length)
    else:
        stop_pos = np.full(q, length)
    lengths = np.minimum(end_pos, stop_pos)
    # Ending is a vote like any token: when too few samples ended where the walk ends, the
    # prefix is the agreed tokens before it, not a whole answer (else its support would fall
    # below min_agreement).
    complete = (end_pos < length) & (end_pos < stop_pos)
    # Support of the chosen prefix: for a complete one, the samples that also ended there.
    at = np.where(complete, lengths, np.maximum(lengths - 1, 0))
    final_support = support[np.arange(q), at]
    return VoteResult(walk, support, lengths.astype(np.int64), final_support, complete, n)


def truncate(result: VoteResult, q: int, new_length: int) -> None:
    """Shorten question q's prefix to ``new_length`` tokens and update its support."""
    if new_length >= int(result.lengths[q]):
        return
    result.lengths[q] = new_length
    result.complete[q] = False
    result.support[q] = result.support_by_depth[q, max(new_length - 1, 0)]
