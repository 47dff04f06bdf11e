"""Tests for builder.voting: dense token arrays, ``first`` and ``majority`` votes, truncation.

Hand-built token arrays pin exact walks, supports and agreement curves; a seeded random check
compares the vectorised vote with a plain per-question loop written here from the rules in the
module docstring (most common next token among agreeing samples; ties to the best cumulative
log-probability, then the lower id; stop at END or before the first depth under min_agreement).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from builder.voting import END, dense, shorten, vote


def pack(samples: list[list[list[int]]], length: int) -> np.ndarray:
    """(Q, N, L) ids from ragged per-question samples, through ``dense`` as the builder does."""
    n = len(samples[0]) if samples else 0
    for i, group in enumerate(samples):
        if len(group) != n:
            raise ValueError(f"question {i} has {len(group)} samples, expected {n}")
    flat = [t for group in samples for ids in group for t in ids]
    lengths = [len(ids) for group in samples for ids in group]
    return dense(np.array(flat, dtype=np.int64), np.array(lengths, dtype=np.int64), n, length)


# --- dense ------------------------------------------------------------------------------------


def test_dense_pads_with_end_and_cuts_at_length() -> None:
    tokens = pack([[[1, 2], [3, 4, 5, 6, 7]], [[8], []]], length=4)
    assert tokens.shape == (2, 2, 4)
    assert tokens.dtype == np.int64
    assert tokens.tolist() == [
        [[1, 2, END, END], [3, 4, 5, 6]],
        [[8, END, END, END], [END, END, END, END]],
    ]


def test_dense_of_no_questions_is_empty() -> None:
    assert dense(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0, 3).shape == (0, 0, 3)


# --- hand-built votes --------------------------------------------------------------------------


def test_unanimous_samples_have_full_support_and_flat_curve() -> None:
    tokens = pack([[[5, 6, 7, 8]] * 4], length=4)
    result = vote(tokens, method="majority")
    assert result.prefix_ids(0) == [5, 6, 7, 8]
    assert result.lengths.tolist() == [4]
    assert result.support.tolist() == [4]
    assert result.agreement.tolist() == [1.0]
    assert result.curves.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert result.complete.tolist() == [False]  # the samples ran to L: not a whole answer
    assert result.n_samples == 4


def test_five_three_split_at_depth_two() -> None:
    tokens = pack([[[1, 2, 3, 4]] * 5 + [[1, 9, 3, 4]] * 3], length=4)
    result = vote(tokens, method="majority")
    assert result.prefix_ids(0) == [1, 2, 3, 4]
    assert result.support_by_depth.tolist() == [[8, 5, 5, 5]]
    assert result.curves.tolist() == [[1.0, 0.625, 0.625, 0.625]]
    assert result.support.tolist() == [5]
    assert result.agreement.tolist() == [0.625]


def test_nested_splits_follow_the_majority_greedily() -> None:
    # depth 2: token 2 (5 samples) beats 7 (3); depth 3: inside the 5, token 3 (3) beats 5 (2).
    samples = [[1, 2, 3, 4]] * 3 + [[1, 2, 5, 6]] * 2 + [[1, 7, 8, 9]] * 3
    result = vote(pack([samples], length=4), method="majority")
    assert result.prefix_ids(0) == [1, 2, 3, 4]
    assert result.curves.tolist() == [[1.0, 0.625, 0.375, 0.375]]
    assert result.support.tolist() == [3]


def test_tie_goes_to_the_token_with_the_best_cumulative_logprob() -> None:
    tokens = pack([[[10, 1]] * 4 + [[20, 2]] * 4], length=2)
    logprobs = np.array([[-2.0, -2.0, -3.0, -4.0, -1.0, -5.0, -5.0, -5.0]])
    result = vote(tokens, logprobs, method="majority")
    assert result.prefix_ids(0) == [20, 2]
    assert result.support.tolist() == [4]
    # The best single sample decides, not the sum: 10's best (-0.5) beats 20's (-1.0).
    logprobs = np.array([[-0.5, -9.0, -9.0, -9.0, -1.0, -1.0, -1.0, -1.0]])
    assert vote(tokens, logprobs, method="majority").prefix_ids(0) == [10, 1]


def test_tie_with_equal_logprobs_goes_to_the_lower_token_id() -> None:
    tokens = pack([[[20, 1]] * 4 + [[10, 2]] * 4], length=2)
    assert vote(tokens, method="majority").prefix_ids(0) == [10, 2]
    equal = np.full((1, 8), -3.0)
    assert vote(tokens, equal, method="majority").prefix_ids(0) == [10, 2]


def test_missing_logprobs_lose_a_tie_to_known_ones() -> None:
    tokens = pack([[[10, 1]] * 2 + [[20, 2]] * 2], length=2)
    logprobs = np.array([[np.nan, np.nan, -7.0, np.nan]])
    assert vote(tokens, logprobs, method="majority").prefix_ids(0) == [20, 2]


def test_count_wins_over_logprob() -> None:
    tokens = pack([[[10, 1]] * 3 + [[20, 2]] * 2], length=2)
    logprobs = np.array([[-9.0, -9.0, -9.0, -0.1, -0.1]])
    assert vote(tokens, logprobs, method="majority").prefix_ids(0) == [10, 1]


def test_min_agreement_stops_before_the_first_low_depth() -> None:
    tokens = pack([[[1, 2, 3, 4]] * 5 + [[1, 2, 9, 9]] * 3], length=4)
    assert vote(tokens, method="majority").curves.tolist() == [[1.0, 1.0, 0.625, 0.625]]

    stopped = vote(tokens, method="majority", min_agreement=0.7)
    assert stopped.lengths.tolist() == [2]
    assert stopped.prefix_ids(0) == [1, 2]
    assert stopped.support.tolist() == [8]
    assert stopped.complete.tolist() == [False]
    # The walk (and so the curve) still runs to L: it measures self-consistency.
    assert stopped.curves.tolist() == [[1.0, 1.0, 0.625, 0.625]]

    passed = vote(tokens, method="majority", min_agreement=0.625)  # equal share passes
    assert passed.lengths.tolist() == [4]
    assert passed.support.tolist() == [5]


def test_min_agreement_never_gives_fewer_than_one_token() -> None:
    tokens = pack([[[1, 2]] * 5 + [[3, 4]] * 3], length=2)
    result = vote(tokens, method="majority", min_agreement=1.0)
    assert result.lengths.tolist() == [1]
    assert result.prefix_ids(0) == [1]
    assert result.support.tolist() == [5]


def test_single_sample_with_first() -> None:
    result = vote(pack([[[3, 4, 5]]], length=4), method="first")
    assert result.walk.tolist() == [[3, 4, 5, END]]
    assert result.prefix_ids(0) == [3, 4, 5]
    assert result.lengths.tolist() == [3]
    assert result.complete.tolist() == [True]
    assert result.support.tolist() == [1]
    assert result.agreement.tolist() == [1.0]
    assert result.curves.tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_samples_that_end_early_agree_on_the_end() -> None:
    tokens = pack([[[1, 2]] * 3 + [[1, 2, 3, 4]]], length=4)
    result = vote(tokens, method="majority")
    assert result.walk.tolist() == [[1, 2, END, END]]
    assert result.support_by_depth.tolist() == [[4, 4, 3, 3]]
    assert result.prefix_ids(0) == [1, 2]
    assert result.complete.tolist() == [True]
    assert result.support.tolist() == [3]  # only the samples that ended at the same place
    assert result.agreement.tolist() == [0.75]


def test_majority_continues_past_a_minority_that_ended() -> None:
    tokens = pack([[[1, 2]] + [[1, 2, 3]] * 3], length=4)
    result = vote(tokens, method="majority")
    assert result.walk.tolist() == [[1, 2, 3, END]]
    assert result.support_by_depth.tolist() == [[4, 4, 3, 3]]
    assert result.lengths.tolist() == [3]
    assert result.complete.tolist() == [True]
    assert result.support.tolist() == [3]


def test_an_end_too_few_samples_reached_is_not_a_whole_answer() -> None:
    # 3 of 8 end after [1, 2]; the other 5 go on with five different tokens, so the walk
    # ends there. Under min_agreement 0.5 the 3/8 ending does not count as agreed: the prefix
    # is the two tokens all 8 share, and it is not complete.
    samples = [[1, 2]] * 3 + [[1, 2, 3 + i] for i in range(5)]
    tokens = pack([samples], length=4)
    plain = vote(tokens, method="majority")
    assert (plain.lengths.tolist(), plain.support.tolist()) == ([2], [3])
    assert plain.complete.tolist() == [True]
    strict = vote(tokens, method="majority", min_agreement=0.5)
    assert strict.prefix_ids(0) == [1, 2]
    assert strict.support.tolist() == [8]
    assert strict.complete.tolist() == [False]


def test_sample_of_exactly_length_tokens_is_not_complete() -> None:
    result = vote(pack([[[1, 2, 3], [1, 2, 3]]], length=3), method="majority")
    assert result.lengths.tolist() == [3]
    assert result.complete.tolist() == [False]


def test_first_and_majority_differ_on_the_same_data() -> None:
    tokens = pack([[[7, 8, 9]] + [[1, 2, 3]] * 3], length=3)
    first = vote(tokens, method="first")
    majority = vote(tokens, method="majority")
    assert first.prefix_ids(0) == [7, 8, 9]
    assert first.support.tolist() == [1]
    assert first.curves.tolist() == [[0.25, 0.25, 0.25]]
    assert majority.prefix_ids(0) == [1, 2, 3]
    assert majority.support.tolist() == [3]
    assert majority.curves.tolist() == [[0.75, 0.75, 0.75]]


def test_first_counts_samples_sharing_the_first_ones_prefix() -> None:
    tokens = pack([[[1, 2, 3], [1, 2, 4], [1, 5, 3], [1, 2, 3]]], length=3)
    result = vote(tokens, method="first")
    assert result.support_by_depth.tolist() == [[4, 3, 2]]
    assert result.support.tolist() == [2]


def test_questions_are_voted_independently() -> None:
    tokens = pack([[[1, 2], [1, 2], [3, 4]], [[5], [6, 7], [6, 8]]], length=2)
    result = vote(tokens, method="majority")
    assert result.walk.tolist() == [[1, 2], [6, 7]]
    assert result.lengths.tolist() == [2, 2]
    assert result.support.tolist() == [2, 1]
    assert result.complete.tolist() == [False, False]


def test_vote_rejects_bad_shapes_and_methods() -> None:
    with pytest.raises(ValueError, match=r"tokens must be \(questions, samples, depth\)"):
        vote(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="unknown vote method 'mode'"):
        vote(pack([[[1]]], length=1), method="mode")


def test_shorten_cuts_and_updates_support() -> None:
    tokens = pack([[[1, 2, 3]] * 2 + [[1, 2, 4]] + [[1, 5, 6]], [[7, 8]] * 4], length=4)
    result = vote(tokens, method="majority")
    assert (result.lengths.tolist(), result.support.tolist()) == ([3, 2], [2, 4])
    assert result.complete.tolist() == [True, True]
    assert shorten(result, np.array([2, 2])).tolist() == [0]  # the second is not shorter
    assert result.prefix_ids(0) == [1, 2]
    assert result.support.tolist() == [3, 4]
    assert result.complete.tolist() == [False, True]
    assert shorten(result, np.array([3, 5])).tolist() == []  # never lengthens
    assert result.lengths.tolist() == [2, 2]
    shorten(result, np.array([1, 0]))
    assert (result.prefix_ids(0), result.support.tolist()) == ([1], [4, 4])
    assert (result.prefix_ids(1), result.complete.tolist()) == ([], [False, False])


# --- random arrays against a plain reference walk ---------------------------------------------


def _reference(
    samples: list[list[int]], logprobs: list[float], method: str, min_agreement: float, length: int
) -> tuple[list[int], int, int, bool]:
    """(walk, prefix length, support, complete) for one question, by the documented rules."""
    n = len(samples)
    if method == "first":
        walk = list(samples[0])
        curve = [sum(s[: d + 1] == walk[: d + 1] for s in samples) for d in range(length)]
    else:
        active = list(range(n))
        walk, curve = [], []
        for d in range(length):
            groups: dict[int, list[int]] = {}
            for j in active:
                groups.setdefault(samples[j][d], []).append(j)

            def rank(token: int, groups: dict[int, list[int]] = groups) -> tuple[int, float, int]:
                best = max(
                    (logprobs[j] if math.isfinite(logprobs[j]) else -math.inf)
                    for j in groups[token]
                )
                return (len(groups[token]), best, -token)

            token = max(groups, key=rank)
            active = groups[token]
            walk.append(token)
            curve.append(len(active))
    threshold = min_agreement if method == "majority" else 0.0
    k, complete = 0, False
    for d in range(length):
        low = d >= 1 and curve[d] / n < threshold
        if walk[d] == END:
            complete = not low
            break
        if low:
            break
        k += 1
    support = curve[k] if complete else curve[max(k - 1, 0)]
    return walk, k, support, complete


def _random_batch(
    rng: np.random.Generator, questions: int, n: int, length: int, vocab: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    # Few token values and coarse log-probs so that splits and both tie-breaks happen often.
    groups = []
    for _ in range(questions):
        group = []
        for _ in range(n):
            stop = int(rng.integers(0, length + 2))  # 0 .. L+1: empty, short, full, cut
            group.append([int(t) for t in rng.integers(0, vocab, size=stop)])
        groups.append(group)
    logprobs = rng.choice([-1.0, -2.0, -3.0, np.nan, -np.inf], size=(questions, n))
    return pack(groups, length), logprobs


@pytest.mark.parametrize("method", ["majority", "first"])
@pytest.mark.parametrize(("n", "vocab"), [(1, 3), (2, 3), (5, 3), (8, 3), (16, 2), (16, 6)])
@pytest.mark.parametrize("min_agreement", [0.0, 0.5])
def test_vectorised_vote_equals_reference_walk(
    method: str, n: int, vocab: int, min_agreement: float
) -> None:
    length, questions = 5, 300
    rng = np.random.default_rng(
        1000 * n + 10 * vocab + int(10 * min_agreement) + (method == "first")
    )
    tokens, logprobs = _random_batch(rng, questions, n, length, vocab)
    result = vote(tokens, logprobs, method=method, min_agreement=min_agreement)
    assert result.walk.shape == (questions, length)
    splits = 0
    for q in range(questions):
        rows = tokens[q].tolist()
        walk, k, support, complete = _reference(
            rows, logprobs[q].tolist(), method, min_agreement, length
        )
        assert result.walk[q].tolist() == walk, q
        assert int(result.lengths[q]) == k, q
        assert int(result.support[q]) == support, q
        assert bool(result.complete[q]) == complete, q
        splits += support < n
    if n > 1:
        assert splits > questions // 4  # the data really exercised disagreement


@pytest.mark.parametrize("method", ["majority", "first"])
def test_vote_invariants_on_random_arrays(method: str) -> None:
    rng = np.random.default_rng(7)
    length, n, questions = 6, 6, 400
    tokens, logprobs = _random_batch(rng, questions, n, length)
    min_agreement = 0.4 if method == "majority" else 0.0
    result = vote(tokens, logprobs, method=method, min_agreement=min_agreement)
    curves = result.curves
    assert np.all(np.diff(result.support_by_depth, axis=1) <= 0)  # agreement only shrinks
    for q in range(questions):
        k = int(result.lengths[q])
        support = int(result.support[q])
        complete = bool(result.complete[q])
        at = k if complete else k - 1
        assert 0 <= k <= length
        assert 1 <= support <= n
        if result.walk[q, 0] != END:
            assert k >= 1
            assert at >= 0
        assert support == round(curves[q, max(at, 0)] * n)
        prefix = result.prefix_ids(q)
        assert END not in prefix
        rows = tokens[q].tolist()
        sharing = sum(row[:k] == prefix and (not complete or row[k] == END) for row in rows)
        assert sharing == support  # exactly the samples that share it (so at least support)
        if method == "majority" and k >= 2:
            assert support / n >= min_agreement
