"""Answer extraction and checking with math-verify (statistics and the label filter).

Used after sampling: full traces get ``extracted_answer`` / ``is_correct`` when the source has
gold answers, and ``mixture.label_filter`` keeps only traces that verify. Gold answers come in
many shapes (GSM8K solutions ending in ``#### 72``, bare numbers, LaTeX): they are reduced to
the final answer and wrapped in ``$...$`` so math-verify parses bare LaTeX too.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)


def normalise_gold(gold: str) -> str:
    """The final answer of a gold field, in a form math-verify parses."""
    text = gold.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    if "$" not in text and "\\boxed" not in text:
        text = f"${text.replace(',', '')}$" if text.replace(",", "").replace(".", "").isdigit() \
            else f"${text}$"
    return text


@lru_cache(maxsize=65536)
def _parse_gold(gold: str) -> Any:
    from math_verify import parse

    return parse(normalise_gold(gold))


def extract_answer(text: str) -> str | None:
    """The answer math-verify finds in a model's trace, as text (None when none)."""
    from math_verify import parse

    parsed = parse(text)
    if not parsed:
        return None
    return str(parsed[-1])


def is_correct(gold: str, text: str) -> bool:
    """Whether the trace's answer matches the gold answer (math-verify's rules)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        logger.debug("gold answer %r does not parse; counting as incorrect", gold)
        return False
    pred = parse(text)
    if not pred:
        return False
    return bool(verify(gold_parsed, pred))
