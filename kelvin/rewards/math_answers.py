"""Final-answer extraction and math equivalence for word problems and competition math.

`math_equal` compares two answer strings with math-verify (sympy). math-verify's own time limits use SIGALRM and
raise off the main thread, so they are disabled here and replaced by one limit of our own: a SIGALRM timer when the
call runs on a main thread (as it does inside the Rewarder's worker process), none otherwise; the Rewarder's worker
process then bounds the call from outside (see kelvin/rewards/functions.py).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"the (?:final )?answer is", re.IGNORECASE)


class _TimeLimitExceeded(Exception):
    """Raised by our SIGALRM handler inside `_time_limit`."""


class MathVerifyTimeout(TimeoutError):
    """math_equal ran over its time limit (the Rewarder counts it as a reward timeout)."""


def preload_math_verify() -> None:
    """Import math-verify (and sympy) now, so that worker processes forked later inherit it instead of paying
    ~0.5 s of imports inside their first timed call. Also silences math-verify's one-time warning that its
    timeouts are disabled: we disable them on purpose and bound the calls ourselves."""
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise _TimeLimitExceeded after `seconds` when on a main thread with SIGALRM; otherwise no limit.

    An outer ITIMER_REAL timer (if any) is restored afterwards with its remaining time.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _TimeLimitExceeded

    started = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


def _parse_answer(answer: str) -> list:
    from math_verify import parse

    # Wrapping in \boxed{} makes math-verify read the whole string as one LaTeX answer (its boxed extractor has
    # the highest priority and handles nested braces), whether it is "27", "\frac{14}{3}" or "(1,8,19), (2,7,13)".
    return parse("\\boxed{" + answer + "}", parsing_timeout=None)


def math_equal(prediction: str | None, gold: str, timeout_s: float | None = 5.0) -> bool:
    """Whether `prediction` is mathematically equal to `gold` (both are bare answers, e.g. "\\frac{1}{2}", "0.5").

    Parses both with math-verify and compares with `verify(gold, prediction)` (not symmetric: gold first). Returns
    False for an empty prediction or an unparsable one; raises MathVerifyTimeout when the comparison runs over
    `timeout_s` (enforced only on a main thread; see the module docstring).
    """
    if prediction is None or not prediction.strip() or not gold.strip():
        return False
    preload_math_verify()
    from math_verify import verify

    try:
        with _time_limit(timeout_s):
            gold_parsed = _parse_answer(remove_math_delimiters(gold))
            predicted = _parse_answer(remove_math_delimiters(prediction))
            if not gold_parsed or not predicted:
                return False
            return bool(verify(gold_parsed, predicted, timeout_seconds=None))
    except _TimeLimitExceeded:
        # Raised, not False: a comparison that ran out of time is not a wrong answer, and the Rewarder counts it in
        # `reward_timeouts` (it catches TimeoutError).
        raise MathVerifyTimeout(
            f"math-verify ran over {timeout_s:g} s comparing {prediction[:80]!r} with {gold[:80]!r}"
        ) from None


def _strip_dollars(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return text


def remove_math_delimiters(text: str) -> str:
    """Every unescaped '$' removed ("$69$,$84$" -> "69,84"; "\\$18" keeps its escaped dollar sign)."""
    return re.sub(r"(?<!\\)\$", "", text).strip()


def _balanced_braces(text: str, open_index: int) -> str | None:
    """The text inside the brace group opening at `open_index`, or None when it is never closed."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` (nested braces allowed), or None when there is none.

    `\\boxed 5` (no braces) yields "5". An unclosed last box (a truncated completion) is ignored in favour of the
    last closed one.
    """
    for match in reversed(list(re.finditer(r"\\boxed", text))):
        rest = match.end()
        stripped = text[rest:].lstrip()
        if stripped.startswith("{"):
            content = _balanced_braces(text, len(text) - len(stripped))
            if content is not None:
                return content.strip()
        elif text[rest : rest + 1] == " " and stripped:
            token = re.match(r"[^\s$]+", stripped)
            if token:
                return token.group(0)
    return None


def _clean_tail(text: str) -> str | None:
    """An answer written after a marker: the rest of its line, without surrounding '$', ':' and a final '.'."""
    line = text.strip().split("\n", 1)[0].strip()
    line = line.lstrip(":").strip()
    line = line.rstrip(".").strip()
    line = _strip_dollars(line)
    return line or None


def last_number(text: str) -> str | None:
    """The last number in the text, thousands separators removed ("1,234.5" -> "1234.5")."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_final_answer(text: str) -> str | None:
    """A model's final answer, in this order of preference:

    1. the last complete `\\boxed{...}` (the format our math prompts ask for);
    2. the rest of the line after the last '####' (GSM8K's reference format);
    3. the rest of the line after the last 'The answer is' / 'The final answer is' (any case);
    4. the last number in the text.
    None when none of these is present.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = _clean_tail(text.rsplit("####", 1)[1])
        if tail is not None:
            return tail
    marks = list(_ANSWER_IS.finditer(text))
    if marks:
        tail = _clean_tail(text[marks[-1].end() :])
        if tail is not None:
            return tail
    return last_number(text)


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for majority voting: no whitespace, no '$', no '\\!' or '\\left'/'\\right', no final '.';
    plain numbers canonicalised ("1,000.0" -> "1000"). Not an equivalence check: "1/2" and "0.5" stay distinct."""
    if answer is None:
        return None
    text = _strip_dollars(answer)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "$"):
        text = text.replace(token, "")
    text = re.sub(r"\s+", "", text).rstrip(".")
    if re.fullmatch(r"-?[\d,]*\.?\d+", text):
        number = Decimal(text.replace(",", ""))
        text = str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")
    return text or None
