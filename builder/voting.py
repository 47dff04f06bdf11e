"""Prefix voting on token ids: the ``first`` sample (the paper) or a token-level ``majority``.

Sits between sampling and assembly. Input is a dense array of sampled token ids, one row of
``L`` ids per sample, padded with ``END`` after a sample that stopped early (a stop token is
treated as a token of its own, so samples that all finish at the same place agree). Everything
is vectorised over questions, so voting a shard is a few numpy passes per depth.

``majority`` walks the samples depth by depth: among the samples that still agree with the walk
it takes the most common next token; ties go to the token whose best supporting sample has the
higher cumulative log-probability, then to the lower token id. The walk always runs to ``L`` so
that the agreement curve (share of samples agreeing with the walk at each depth 1..L) measures
prefix self-consistency; the prefix itself stops where the walk ends (END) or, with
``min_agreement``, before the first depth whose agreeing share falls below it (never before
the first token).

At a depth where every agreeing sample of a question has the same next token the vote is that
token; only the questions whose agreeing samples differ there compare them pairwise. Each such
split drops at least one sample from the walk, so a question splits at most N - 1 times, and
the pairwise work stays a small share of the depths.
"""

from __future__ import annotations

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


def dense(flat: np.ndarray, lengths: np.ndarray, n: int, length: int) -> np.ndarray:
    """(Q, N, L) ids from every sample's ids concatenated (``flat``) and their ``lengths``:
    question q's samples are rows ``q*n .. q*n+n-1``; positions after a sample's end hold END."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else lengths
    depth = np.arange(length)
    mask = depth[None, :] < np.minimum(lengths, length)[:, None]
    out = np.full((len(lengths), length), END, dtype=np.int64)
    out[mask] = np.asarray(flat)[(starts[:, None] + depth[None, :])[mask]]
    questions = len(lengths) // n if n else 0
    return out.reshape(questions, n, length)


def _majority_walk(tokens: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, n, length = tokens.shape
    active = np.ones((q, n), dtype=bool)
    walk = np.full((q, length), END, dtype=np.int64)
    support = np.zeros((q, length), dtype=np.int64)
    lp = np.where(np.isfinite(logprobs), logprobs, -np.inf).astype(np.float64)
    top = np.iinfo(np.int64).max
    for d in range(length):
        tok = tokens[:, :, d]
        chosen = np.where(active, tok, top).min(axis=1)
        count = active.sum(axis=1)
        split = np.flatnonzero(chosen != np.where(active, tok, END - 1).max(axis=1))
        if split.size:
            chosen[split], count[split] = _split_vote(tok[split], active[split], lp[split])
        walk[:, d] = chosen
        support[:, d] = count
        active &= tok == chosen[:, None]
    return walk, support


def _split_vote(
    tok: np.ndarray, active: np.ndarray, lp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The vote at one depth of questions whose agreeing samples differ: the most common token,
    then the higher best log-probability among its samples, then the lower id."""
    # same[q, i, j]: sample j still agrees with the walk and votes for the same token as i.
    same = (tok[:, :, None] == tok[:, None, :]) & active[:, None, :]
    counts = np.where(active, same.sum(axis=2), -1)
    best_lp = np.where(same, lp[:, None, :], -np.inf).max(axis=2)
    most = counts.max(axis=1, keepdims=True)
    tied = counts == most
    lp_tied = np.where(tied, best_lp, -np.inf)
    tied &= lp_tied == lp_tied.max(axis=1, keepdims=True)
    chosen = np.where(tied, tok, np.iinfo(np.int64).max).min(axis=1)
    return chosen, most[:, 0]


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


def shorten(result: VoteResult, lengths: np.ndarray) -> np.ndarray:
    """Shorten prefixes to ``lengths`` tokens where that is shorter (a prefix never grows), with
    their support; a shortened prefix is no longer a whole answer. Returns the questions cut."""
    cut = np.flatnonzero(np.asarray(lengths) < result.lengths)
    new = np.asarray(lengths)[cut]
    result.lengths[cut] = new
    result.complete[cut] = False
    result.support[cut] = result.support_by_depth[cut, np.maximum(new - 1, 0)]
    return cut
