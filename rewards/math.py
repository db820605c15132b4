"""Math answers: extraction, equivalence and the correctness / format rewards.

Gold answers: GSM8K (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems") ends
with ``#### <number>``; MATH (Hendrycks et al., 2021, "Measuring Mathematical Problem Solving With
the MATH Dataset") puts the answer in the last ``\\boxed{...}``. Equivalence is numeric first
(in-process), then symbolic (math-verify, else sympy) in a reused helper process that is killed
when it exceeds its time limit, so a pathological expression cannot hang the caller.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

# a number: optional minus, digits with optional thousands commas and decimals, or a decimal
# written without its leading zero (".4" is 0.4, never 4), optionally over a denominator
_NUM = r"(?:(?<![\w)\]}])-)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\d.])\.\d+)(?:/\d+(?:\.\d+)?)?"
_NUM_RE = re.compile(_NUM)
_PHRASE_RE = re.compile(r"answer\s*(?:is|:)\s*[:=]?[ \t]*([^\n]*)", re.IGNORECASE)
_FORMAT_RES = (
    re.compile(r"^\s*####\s*\S", re.MULTILINE),
    re.compile(r"\\boxed\s*\{|\\boxed\s+\S"),
    re.compile(r"answer\s*(?:is|:)\s*[:=]?[\s*$(]*(?:-?\d|\\d?frac)", re.IGNORECASE),
)
_NUMBER_FORMS = (
    re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"),
    re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$"),
)
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{?([^{}]+?)\}?\{?([^{}]+?)\}?$")
_EXPONENT_RE = re.compile(r"[eE]([+-]?\d+)$")
MAX_ANSWER_CHARS = 1000
MAX_EXPONENT = 400  # "1e999999" is no plain number here (exact arithmetic on it would be slow)
REL_TOL = Fraction(1, 10**6)  # spec section 9: non-integral numbers agree within 1e-6 relative
HELPER_START_S = 60.0


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces matched) or ``\\boxed x``; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5):]
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        token = re.match(r"\s+([^\s$]+)", rest)
        return token.group(1) if token else None
    depth = 0
    for i, char in enumerate(stripped):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return stripped[1:i].strip()
    return None  # unbalanced braces


def _number(text: str, last: bool = True) -> str | None:
    matches = _NUM_RE.findall(text)
    return (matches[-1] if last else matches[0]).replace(",", "") if matches else None


def _phrase(text: str) -> str | None:
    """The answer after the last "the answer is" / "Answer:" phrase."""
    matches = list(_PHRASE_RE.finditer(text))
    if not matches:
        return None
    tail = matches[-1].group(1).replace("*", "").strip().strip("$").strip()
    if re.match(r"^[-\\(\d]", tail):
        expr = re.split(r"\$|\.\s|\.$|,\s", tail)[0].strip()
        number = re.fullmatch(_NUM, expr)
        return expr.replace(",", "") if number else (expr or None)
    return _number(tail, last=False)


def extract_answer(text: str) -> str | None:
    """Final answer of a GSM8K gold string, a MATH solution or a model completion.

    Order: ``#### 1,234`` -> ``"1234"`` (GSM8K); else the last ``\\boxed{...}`` (MATH); else a
    phrase "the answer is X" / "Answer: X"; else the last number in the text (commas as
    thousands separators removed). None when nothing is found.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.replace("\u2212", "-")
    if "####" in text:
        line = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        found = _number(line, last=False)
        if found is not None or line.strip():
            return found if found is not None else line.strip().rstrip(".")
    boxed = _boxed(text)
    if boxed:
        return boxed
    return _phrase(text) or _number(text)


def _clean(answer: Any) -> str:
    """Strip dollars, spacing commands, ``\\left``/``\\right``, ``\\text{}`` and a final '.'."""
    s = str(answer).replace("\u2212", "-").strip()
    for old, new in (("\\$", ""), ("$", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("\\:", ""), ("\\ ", " "), ("\\left", ""), ("\\right", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^\\circ", ""),
                     ("^{\\circ}", ""), ("\\%", "%")):
        s = s.replace(old, new)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s).strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)  # "x = 5" -> "5"
    return s.rstrip(".").strip()


def _to_number(s: str) -> tuple[Fraction, bool] | None:
    """``(value, is_percent)`` for ints, decimals, 1,234, a/b, \\frac{a}{b} and x%, as an exact
    ``Fraction`` (a decimal string is read exactly: "0.1" is 1/10, "70000.0" is 70000)."""
    s = s.replace(" ", "")
    percent = s.endswith("%")
    s = s.rstrip("%")
    if any(form.match(s) for form in _NUMBER_FORMS):
        exponent = _EXPONENT_RE.search(s)
        if exponent and abs(int(exponent.group(1))) > MAX_EXPONENT:
            return None
        return Fraction(s.replace(",", "")), percent
    frac = _FRAC_RE.match(s)
    parts = (frac.group(1), frac.group(2), frac.group(3)) if frac else None
    if parts is None and s.count("/") == 1:
        num, den = s.split("/")
        sign = "-" if num.startswith("-") else ""
        parts = (sign, num.lstrip("+-"), den)
    if parts is None:
        return None
    num, den = (_to_number(p) for p in parts[1:])
    if num is None or den is None or den[0] == 0:
        return None
    value = num[0] / den[0]
    return (-value if parts[0] == "-" else value), percent


def numbers_equal(a: Fraction, b: Fraction) -> bool:
    """Spec section 9: two integral values are equal only when they are the same integer (70001 is
    not 70000, whatever their size; "70000.0" is 70000); otherwise equal within a relative
    tolerance of 1e-6, ``|a - b| <= 1e-6 * max(|a|, |b|)``, boundary included, in exact
    arithmetic (so 0.333333 and 1/3, exactly 1e-6 apart relatively, are equal, and 0.33333 and
    1/3 are not; floats would decide such boundary cases by rounding)."""
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def is_equivalent(pred: Any, gold: Any, timeout_s: float = 5.0) -> bool:
    """True when ``pred`` and ``gold`` denote the same answer; never raises.

    Numbers (ints, decimals, thousands commas, ``a/b``, ``\\frac{a}{b}``, percentages, where
    ``50%`` matches both ``50`` and ``0.5``) compare exactly when both are integral and within a
    relative tolerance of 1e-6 otherwise (``numbers_equal``; spec section 9). Anything else is
    compared symbolically (math-verify, else sympy) in a helper process killed after
    ``timeout_s`` seconds; a timeout counts as not equivalent.
    """
    try:
        p, g = _clean(pred), _clean(gold)
        if pred is None or gold is None or not p or not g:
            return False
        if p.replace(" ", "") == g.replace(" ", ""):
            return True
        pn, gn = _to_number(p), _to_number(g)
        if pn is not None and gn is not None:
            p_values = {pn[0], pn[0] / 100} if pn[1] else {pn[0]}
            g_values = {gn[0], gn[0] / 100} if gn[1] else {gn[0]}
            return any(numbers_equal(a, b) for a in p_values for b in g_values)
        if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
            return False
        return _HELPER.check(p, g, timeout_s)
    except Exception:  # noqa: BLE001 - garbage in, False out
        return False


def _gold(answer: Any) -> str | None:
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return None
    gold = str(answer).strip()
    if "####" in gold or "\\boxed" in gold:
        gold = extract_answer(gold) or ""
    return gold or None


def correctness(completions: list[str], answer: list[Any], **columns: Any) -> list[float | None]:
    """1.0 when the completion's extracted answer equals the gold ``answer``, else 0.0.

    None where the row's answer is None or empty. Gold answers containing ``####`` (GSM8K,
    Cobbe et al. 2021) or ``\\boxed`` (MATH, Hendrycks et al. 2021) are extracted first.
    """
    scores: list[float | None] = []
    for text, raw in zip(completions, answer):
        gold = _gold(raw)
        if gold is None:
            scores.append(None)
            continue
        pred = extract_answer(text)
        scores.append(1.0 if pred is not None and is_equivalent(pred, gold) else 0.0)
    return scores


def format_reward(completions: list[str], **columns: Any) -> list[float]:
    """1.0 when the completion states its final answer explicitly, else 0.0.

    Explicit means a GSM8K-style ``#### x`` line (Cobbe et al. 2021), a MATH-style ``\\boxed{}``
    (Hendrycks et al. 2021), or "answer is" / "Answer:" followed by a number.
    """
    return [1.0 if isinstance(text, str) and any(r.search(text) for r in _FORMAT_RES) else 0.0
            for text in completions]


def _math_verify_equal(pred: str, gold: str, timeout_s: float) -> bool:
    from math_verify import parse, verify  # imported in the helper process only

    inner = max(1, int(timeout_s) // 2)  # math-verify's own (signal) limits, inside ours
    parsed_gold = parse(f"${gold}$", parsing_timeout=inner)
    parsed_pred = parse(f"${pred}$", parsing_timeout=inner)
    return bool(parsed_gold and parsed_pred and verify(parsed_gold, parsed_pred,
                                                       timeout_seconds=inner))


def _sympy_equal(pred: str, gold: str, timeout_s: float) -> bool:
    """Fallback without math-verify: a small LaTeX subset, whitelisted names, ``simplify``."""
    from sympy import simplify
    from sympy.parsing.sympy_parser import parse_expr

    def convert(s: str) -> Any:
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
        for old, new in (("^", "**"), ("\\cdot", "*"), ("\\times", "*"), ("\\pi", "pi"),
                         ("{", "("), ("}", ")")):
            s = s.replace(old, new)
        if not re.fullmatch(r"[\w+\-*/(). ]*", s) or any(
                len(w) > 1 and w not in ("sqrt", "pi") for w in re.findall(r"[A-Za-z_]+", s)):
            raise ValueError(f"unsupported expression {s!r}")
        return parse_expr(s)

    return simplify(convert(pred) - convert(gold)) == 0


def _serve() -> None:
    """Helper process loop: one JSON request per stdin line, one JSON reply per stdout line."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from the checkers must not corrupt the protocol
    checker = _math_verify_equal if importlib.util.find_spec("math_verify") else _sympy_equal
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            equal = bool(checker(request["pred"], request["gold"], request["timeout_s"]))
        except Exception:  # noqa: BLE001 - any failure means "not shown equal"
            equal = False
        out.write(json.dumps({"equal": equal}).encode() + b"\n")
        out.flush()


def _readline(proc: subprocess.Popen, timeout_s: float) -> bytes | None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else None


class _SymbolicHelper:
    """A reused helper process for symbolic checks, killed (and later restarted) on timeout."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.Popen(
            [sys.executable, "-c", "from rewards.math import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        if _readline(proc, HELPER_START_S) != b"ready":
            proc.kill()
            proc.communicate()
            raise RuntimeError("the symbolic-check helper process did not start")
        return proc

    def check(self, pred: str, gold: str, timeout_s: float) -> bool:
        """Symbolic equality within ``timeout_s`` seconds; False on timeout or error."""
        with self._lock:
            if self._owner != os.getpid():  # forked: the helper belongs to the parent
                self._proc, self._owner = None, os.getpid()
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            request = {"pred": pred, "gold": gold, "timeout_s": timeout_s}
            try:
                self._proc.stdin.write(json.dumps(request).encode() + b"\n")
                self._proc.stdin.flush()
                line = _readline(self._proc, timeout_s)
            except OSError:
                line = None
            if not line:
                self.close()
                return False
            return json.loads(line).get("equal") is True

    def close(self) -> None:
        """Kill and reap the helper process (it restarts on the next symbolic check)."""
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()


_HELPER = _SymbolicHelper()  # the one process cache of this module; started lazily
