"""Gold answers: reading a source's answer field, and the normalisation rules math-verify needs.

Second stage of the pipeline (the source stage, ``builder.sources``, calls :func:`read_gold` for
every row; ``upft-eval`` goes through the same stage), and again at checking time
(``builder.answers`` applies the same rules to the content of a completion's ``\\boxed{}``).
The comparison itself is math-verify's; this module only rewrites the written forms that public
sets use and math-verify would misread, one general rule set instead of one per dataset:

=====================  ====================================  ===========================
rule                   written                               read as
=====================  ====================================  ===========================
GSM8K solution         ``... #### 72``                       ``72``
answer pattern         ``Answer: 7`` with ``Answer: (.+)``   ``7`` (``answer_pattern``)
LaTeX delimiters       ``$\\frac{1}{2}$``                      ``\\frac{1}{2}``
currency               ``\\$18.90``, ``$18.90``, ``Rs. 40``     ``18.90``, ``18.90``, ``40``
thousands separators   ``1,000``, ``10{,}000``, ``32,\\!348``   ``1000``, ``10000``, ``32348``
several answers        ``3,5,7``, ``3, 5, 7``, ``7 and 3``   the set ``3, 5, 7`` (any order)
brackets keep commas   ``(1,2)``, ``[1,2)``, ``\\{1,2\\}``       a point / interval / set
percent                ``25 percent``, ``25%``               ``25\\%`` (= 25 or 0.25)
degrees                ``30°``, ``30^\\circ``, ``30 degrees``  ``30``
units in parentheses   ``9 (apples)``, ``2/3 (cups)``        ``9``, ``2/3``
unit words             ``18.90 dollars``, ``12 km/h``        ``18.90``, ``12``
LaTeX unit text        ``5 \\text{ cm}^2``                     ``5``
mixed numbers          ``1 1/2 cups``                        ``1\\frac{1}{2}`` (= 3/2)
trailing zeros, stop   ``145.0``, ``72.``                    ``145``, ``72``
=====================  ====================================  ===========================

Commas: a comma with no space after it inside digits grouped ``d,ddd`` (one to three digits,
then groups of exactly three) is a thousands separator, so ``1,000`` is one thousand and
``1,234`` is 1234, never the list {1, 234}; every other comma outside brackets separates
answers (``3,5,7``; ``12,34``). When a comma is followed by a space, answers are separated by
comma + space and an item may use thousands separators (``1,000, 2,000``). Answers in brackets
are left to math-verify, which reads ``(1,2)`` as a point or open interval (order matters).

Left alone on purpose: a single letter after a number (``2 x`` is a variable, not a unit), math
words (``5 pi``, ``2 sqrt 3``), and LaTeX answers in general. A gold answer that still mixes
numbers and words after these rules (``about 40``, ``5 hours 30 minutes``) matches no model
answer; :func:`leftover_words` names it and the build/eval counts it (``builder.answers``).

A model's answer gets the same rules inside each ``\\boxed{}`` (``\\boxed{12 km/h}``,
``\\boxed{\\$18.90}``), and an escaped ``\\$`` before a number is dropped anywhere in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from builder.errors import SourceError

# --- reading a source's answer field --------------------------------------------------------


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """``answer_pattern`` checked: a valid regular expression with exactly one group.

    Raises ValueError with the fix (pydantic turns it into a field error with its line).
    """
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"answer_pattern {pattern!r} is not a valid regular expression: {exc}"
        ) from None
    if compiled.groups != 1:
        raise ValueError(
            f"answer_pattern {pattern!r} has {compiled.groups} groups; it needs exactly one "
            "group around the answer, e.g. 'Answer:\\s*(.+)' (write other groups as (?:...))"
        )
    return compiled


def format_number(value: int | float | Decimal) -> str:
    """A number as text, exactly and without a spurious ``.0`` (27.0 -> 27, 0.5 -> 0.5)."""
    if isinstance(value, int):
        return str(value)
    number = Decimal(repr(value)) if isinstance(value, float) else value
    if not number.is_finite():
        raise ValueError(f"{value} is not a finite number")
    if number == number.to_integral_value():
        return str(int(number))
    # Positional notation (no exponent): math-verify reads 0.0000001, not 1e-07.
    return format(number.normalize(), "f")


def json_kind(value: Any) -> str:
    """A JSON-ish name for a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _gold_item(value: Any, where: str, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            return format_number(value)
        except ValueError:
            pass
    raise SourceError(
        f"{where}: answer field {field!r} holds {json_kind(value)} ({value!r:.60}); a gold answer "
        "must be a string, a number, or a list of them (any of which is accepted)"
    )


def read_gold(
    value: Any, where: str, field: str, pattern: re.Pattern[str] | str | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """(display text, acceptable answers in math-verify form) of one row's answer field.

    The one place gold answers are read. A list means "any of these"; null, empty strings and
    empty lists mean "no gold answer" (``(None, ())``). With ``pattern``, each answer is the
    pattern's group; an answer it does not match is kept for display but is not acceptable, so
    a row whose answers all miss has a display text and no acceptable answer (counted by
    ``builder.answers.audit``).
    """
    if isinstance(value, (list, tuple)):
        items = [_gold_item(v, where, field) for v in value]
        texts = list(dict.fromkeys(t for t in items if t is not None))
    else:
        one = _gold_item(value, where, field)
        texts = [] if one is None else [one]
    if not texts:
        return None, ()
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    found: list[str] = []
    for text in texts:
        if regex is not None:
            match = regex.search(text)
            group = match.group(1) if match else None
            if not group or not group.strip():
                continue
            text = group.strip()
        found.append(normalise_gold(text))
    return " | ".join(texts), tuple(dict.fromkeys(g for g in found if g != "$$"))


# --- the rules --------------------------------------------------------------------------------

_NUM = r"[-−]?(?:\d+(?:\.\d+)?|\.\d+)"
_FRAC = r"[-−]?\\[dt]?frac\{[^{}]+\}\{[^{}]+\}"
# A number a unit may follow: plain, a/b, a b/c, \frac{a}{b}, with an optional percent sign.
_NUMBER_HEAD = rf"(?:\d+\s+\d+\s*/\s*\d+|{_NUM}(?:\s*/\s*{_NUM})?|{_FRAC})(?:\\%|%)?"
_MIXED = re.compile(r"^(\d+)\s+(\d+)\s*/\s*(\d+)$")
_PLAIN_NUMBER = re.compile(rf"^{_NUM}$")
_TRAILING_ZEROS = re.compile(r"^([-−]?\d+)\.0+$")
# d,ddd,ddd: one to three digits, then groups of exactly three (no space after the comma).
_THOUSANDS_RUN = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?![\d,])")
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\,|\\ |~)(?=\d{3}(?!\d))")
_ESCAPED_DOLLAR = re.compile(r"\\\$\s*")
_CURRENCY_DOLLAR = re.compile(r"\$\s*(?=[-−]?\.?\d)")
_CURRENCY_PREFIX = re.compile(
    r"^(?P<sign>[-−]?)\s*(?:US\$|USD|EUR|GBP|INR|Rs\.?|€|£|¥|₹)\s*(?=[-−]?\.?\d)"
)
_DEGREES = re.compile(
    rf"^(?P<head>{_NUMBER_HEAD})\s*(?:\^\s*\{{?\s*\\circ\s*\}}?|°|\\degree\b)\s*(?:[CF]\b)?$"
)
_PERCENT_WORD = re.compile(r"\s*\b(?:per\s*cent|percent|pct)\b\.?$", re.IGNORECASE)
_PAREN_UNIT = re.compile(rf"^(?P<head>{_NUMBER_HEAD})\s*\((?P<unit>[A-Za-zµ][^()\d\\]*)\)$")
_WORD_UNIT = re.compile(
    rf"^(?P<head>{_NUMBER_HEAD})\s+"
    r"(?P<unit>[A-Za-zµ][A-Za-zµ .'’/-]*(?:(?:\^\s*\{?[23]\}?|[²³])[A-Za-zµ .'’/-]*)*)$"
)
_TEXT_UNIT = re.compile(
    rf"^(?P<head>{_NUMBER_HEAD})\s*(?:\\[ ,;!]|~)?\s*"
    r"(?P<unit>(?:\\(?:text|mbox|mathrm|textrm)\s*\{[^{}\d]*\}\s*)+)"
    r"(?:\^\s*\{?[23]\}?|[²³])?$"
)
# Words a unit tail must not contain: they make the tail mathematics, not a unit.
_MATH_WORDS = frozenset(
    "pi sqrt sin cos tan cot sec csc log ln exp arcsin arccos arctan sinh cosh tanh inf "
    "infinity infty mod and or i e x y z n".split()
)
_SHORT_UNITS = frozenset("cm mm km kg mg ml mL ft yd mi lb oz hr h min s m g l L in".split())
_WORD = re.compile(r"[A-Za-zµ]+")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_LETTERS2 = re.compile(r"[A-Za-zµ]{2,}")
_OPENERS, _CLOSERS = "([{", ")]}"


def _is_unit(unit: str) -> bool:
    """Whether a tail after a number reads as a unit: a word of three or more letters, or
    short unit symbols only (``km/h``, ``cm``); never a math word (``5 pi`` keeps its pi) nor
    a lone letter (``2 x`` is a variable)."""
    words = _WORD.findall(_COMMAND.sub(" ", unit))
    if not words or any(w.lower() in _MATH_WORDS for w in words):
        return False
    if any(len(w) >= 3 for w in words):
        return True
    return all(w in _SHORT_UNITS for w in words) and sum(map(len, words)) >= 2


def _strip_currency(text: str) -> str:
    text = _ESCAPED_DOLLAR.sub("", text)
    if "$" in text:
        bare = _CURRENCY_DOLLAR.sub("", text)
        if "$" not in bare:  # every $ stood before a number: money, not LaTeX delimiters
            text = bare
    match = _CURRENCY_PREFIX.match(text)
    if match:
        text = match.group("sign") + text[match.end() :]
    return text


def _strip_unit(text: str) -> str:
    """The number without its unit or degree mark: ``9 (apples)``, ``12 km/h``, ``30°``."""
    degrees = _DEGREES.match(text)
    if degrees:
        return degrees.group("head").strip()
    for pattern in (_PAREN_UNIT, _TEXT_UNIT, _WORD_UNIT):
        match = pattern.match(text)
        if match and _is_unit(match.group("unit")):
            return match.group("head").strip()
    return text


def _item(text: str) -> str:
    """The rules for one answer (no list commas left in it)."""
    text = text.strip().rstrip(".").strip() if not text.endswith("..") else text.strip()
    text = _no_thousands(_strip_currency(text).strip())
    text = _PERCENT_WORD.sub(r"\\%", text)
    text = _strip_unit(text)
    mixed = _MIXED.match(text)
    if mixed:
        text = f"{mixed.group(1)}\\frac{{{mixed.group(2)}}}{{{mixed.group(3)}}}"
    zeros = _TRAILING_ZEROS.match(text)
    if zeros:
        text = zeros.group(1)
    return text.replace("−", "-")


def _has_brackets(text: str) -> bool:
    return any(c in text for c in _OPENERS + _CLOSERS) or "\\" in text


def _no_thousands(text: str) -> str:
    return _THOUSANDS_RUN.sub(lambda m: m.group(0).replace(",", ""), text)


def _split_items(text: str) -> list[str]:
    """Several answers separated by commas (see the module docstring for the comma rules)."""
    parts = re.split(r",\s+", text) if re.search(r",\s", text) else [text]
    out: list[str] = []
    for part in parts:
        out.extend([part] if "," not in _no_thousands(part) else part.split(","))
    return out


def normalise_answer(text: str) -> str:
    """One answer (gold or boxed content) rewritten by the rule table; LaTeX passes through."""
    text = text.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    text = _LATEX_THOUSANDS.sub("", text)
    if "," in text and not _has_brackets(_ESCAPED_DOLLAR.sub("", text)):
        items = [_item(p) for p in _split_items(text)]
        items = [i for i in items if i]
        return ", ".join(items)
    return _item(text)


def _unwrap_dollars(text: str) -> str | None:
    """The content of an answer written entirely as ``$...$`` or ``$$...$$`` (else None)."""
    for fence in ("$$", "$"):
        if (
            len(text) > 2 * len(fence)
            and text.startswith(fence)
            and text.endswith(fence)
            and "$" not in text[len(fence) : -len(fence)]
        ):
            return text[len(fence) : -len(fence)]
    return None


def normalise_gold(gold: str) -> str:
    """The final answer of a gold field, in a form math-verify parses (``$...$``-wrapped).

    Idempotent: a normalised gold answer normalises to itself.
    """
    text = gold.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    if "\\boxed" in text or "\\fbox" in text:
        return rewrite_boxed(text)
    inner = _unwrap_dollars(text)
    text = normalise_answer(inner if inner is not None else text)
    if "$" in text:  # mixed LaTeX and text: math-verify finds the $...$ parts itself
        return text
    return f"${text}$"


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced)."""
    spans = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((match.end(), i - 1))
    return spans


def rewrite_boxed(text: str) -> str:
    """``text`` with the rules applied inside every ``\\boxed{}`` and ``\\$`` before numbers
    dropped: a model's answer read the way its gold answer is."""
    spans = _boxed_spans(text)
    for start, end in reversed(spans):
        inner = text[start:end]
        unwrapped = _unwrap_dollars(inner.strip())
        text = text[:start] + normalise_answer(unwrapped or inner) + text[end:]
    return re.sub(r"\\\$\s*(?=[-−]?\.?\d)", "", text)


# --- what the rules leave -------------------------------------------------------------------

# A command's argument that is a name, not mathematics: \begin{pmatrix}, \mathbf{v}.
_LATEX_ARGUMENT = re.compile(r"\\[A-Za-z]+\*?\s*\{[A-Za-z*]*\}")
_LATEX_TEXT = re.compile(r"\\(?:text|mbox|mathrm|textrm|textbf|operatorname)\s*\{[^{}]*\}")


def is_plain_number(gold: str) -> bool:
    """A normalised gold answer that is one number or a list of numbers (math-verify reads
    those without fail, so no parse is needed to know it is comparable)."""
    inner = _unwrap_dollars(gold)
    if inner is None:
        return False
    items = [i.strip() for i in inner.split(",")]
    return all(_PLAIN_NUMBER.match(i) or re.match(rf"^{_NUM}/{_NUM}$", i) for i in items)


def leftover_words(gold: str) -> str | None:
    """The words a normalised gold answer still mixes with numbers, or None.

    ``about 40`` or ``5 hours 30 minutes``: math-verify would read the words as products of
    one-letter variables (``40*a*b*o*t*u``), which no model answer matches. Text answers
    without digits (``Evelyn``, ``east``) and LaTeX text (``\\text{...}``) are fine.
    """
    bare = _COMMAND.sub(" ", _LATEX_ARGUMENT.sub(" ", _LATEX_TEXT.sub(" ", gold)))
    if not re.search(r"\d", bare):
        return None
    words = [w for w in _LETTERS2.findall(bare) if w.lower() not in _MATH_WORDS]
    return " ".join(words) if words else None


def golds_of(answers: Sequence[str]) -> tuple[str, ...]:
    """Acceptable answers, deduplicated in order (what ``Question.answers`` holds)."""
    return tuple(dict.fromkeys(a for a in answers if a))
