"""SkyThought's published scorers, reimplemented: Qwen-Math's `math_equal` and its answer extraction, and
the GPQA letter pick. The published scores were made with these (ST@HEAD skythought/evals/scoring/math,
tasks/math/math_handler.py `math_equal(strip(extract_answer(generation)), strip(answer))`, and
gpqa_diamond_handler.py `get_multiple_choice_answer`); our own grader is math-verify (grading.py).

    score_math(response, gold)   -> bool   the answer in the response's last \\boxed{} (else "the answer is",
                                            else the last number) equals the gold: same text, same number
                                            (relative 1e-4, or x100 / /100 as a percentage), the same tuple,
                                            matrix or equation, or sympy finds the difference is 0
    score_mcq(response, letter)  -> bool   the last standalone A-D anywhere in the response is the gold

Our code, written from the published behaviour (Qwen2.5-Math evaluation/grader.py and parser.py, which
SkyThought's math_parsing_util.py borrows), not a copy: number words are not converted (SkyThought uses
word2number), everything else follows. Sympy comes from math-verify's dependencies (sympy,
latex2sympy2_extended); without them only the text and number rules apply. A comparison is cut off after
`timeout_s` (SkyThought: 5 s) in a main thread, and then counts as unequal.
"""
from __future__ import annotations

import contextlib
import math
import re
import signal
import threading

# ---- answer text normalization (Qwen's strip_string, in the order it applies) -------------------------------

_REPLACE = [("\n", ""), ("\\!", ""), ("bmatrix", "pmatrix"), ("tfrac", "frac"), ("dfrac", "frac"),
            ("\\neq", "\\ne"), ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\left", ""), ("\\right", ""),
            ("\\{", "{"), ("\\}", "}")]
_VARIABLE_PREFIXES = ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to")


def strip_answer(s) -> str:
    s = str(s).strip()
    s = s.replace("\n", "").rstrip(".")
    for a, b in _REPLACE:
        s = s.replace(a, b)
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s)
    s = re.sub(r"(cm|inches)\}\^2", r"\1}", s)
    unitless = re.sub(r"\\text\{.*?\}$", "", s).strip()      # a trailing unit: "5 \text{ miles}" -> "5"
    if unitless and unitless != s:
        s = unitless
    for a in ("^{\\circ}", "^\\circ", "\\$", "$", "\\(", "\\)"):
        s = s.replace(a, "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for prefix in _VARIABLE_PREFIXES:
        s = s.replace(prefix, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox\{.*?\}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")                       # imaginary unit
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)       # 5.00 -> 5
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    lhs, eq, rhs = s.partition("=")
    if eq and "=" not in rhs and len(lhs) <= 2:       # "k = 5" -> "5"
        s = rhs
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    s = _braced_fracs(s)
    m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)                # 3/4 -> \frac{3}{4}
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    s = re.sub(r"\\(?=-?\d+(\\|\)|,|\]|$))", "", s)
    s = re.sub(r"thgrade$", "", s)
    if re.fullmatch(r"(\s*-?\d+\s*,)*\s*-?\d+\s*", s):  # a list of integers: order does not matter
        s = ",".join(str(x) for x in sorted(int(x) for x in s.split(",")))
    return s


def _braced_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}."""
    head, *rest = s.split("\\frac")
    out = head
    for part in rest:
        out += "\\frac"
        if part.startswith("{"):
            out += part
        elif len(part) < 2:
            return s
        elif part[1] == "{":
            out += "{" + part[0] + "}" + part[1:]
        else:
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
    return out


# ---- answer extraction ---------------------------------------------------------------------------------------

def extract_answer(text: str | None) -> str:
    """The last \\boxed{...} (or what follows "boxed" up to a $), else after "the answer is", else the last
    number; then normalized."""
    text = (text or "").replace("\u043a\u0438", "")
    if "final answer is $" in text and "$. I hope" in text:          # Minerva's few-shot format
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        tail = text.split("boxed")[-1]
        if tail.startswith("{"):
            depth, out = 1, []
            for c in tail[1:]:
                depth += {"{": 1, "}": -1}.get(c, 0)
                if depth == 0:
                    break
                out.append(c)
            pred = "".join(out)
        else:
            pred = tail.split("$")[0].strip()
    elif "he answer is" in text:
        pred = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        pred = text.split("final answer is")[-1].strip()
    else:
        numbers = re.findall(r"-?\d*\.?\d+", text.replace(",", ""))
        pred = numbers[-1] if numbers else ""
    pred = re.sub(r"\n\s*", "", pred)
    pred = pred[1:] if pred.startswith(":") else pred
    pred = pred[:-1] if pred.endswith(".") else pred
    pred = pred[:-1] if pred.endswith("/") else pred
    return strip_answer(pred)


# ---- equality ------------------------------------------------------------------------------------------------

def _number(s) -> float | None:
    s = str(s).replace(",", "")
    try:
        return float(s)
    except ValueError:
        if s.endswith("%"):
            s = s[:-1].rstrip("\\")
            try:
                return float(s) / 100
            except ValueError:
                return None
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4)


def math_equal(pred, ref, include_percentage: bool = True) -> bool:
    if pred is None or ref is None:
        return False
    pred, ref = str(pred).strip(), str(ref).strip()
    if pred.lower() == ref.lower():
        return True
    if ref in ("A", "B", "C", "D", "E") and _choice(pred) == ref:
        return True
    p, r = _number(pred), _number(ref)
    if p is not None and r is not None:
        targets = (r / 100, r, r * 100) if include_percentage else (r,)
        return any(_close(p, t) for t in targets)
    if not pred:
        return False
    if "pmatrix" in pred and "pmatrix" not in ref:
        ref = _to_pmatrix(ref)
    a, b = pred, ref
    if (pred.startswith("[") and pred.endswith("]") and not ref.startswith("(")) or \
            (pred.startswith("(") and pred.endswith(")") and not ref.startswith("[")):
        a, b = a.strip("[]()"), b.strip("[]()")
    if re.sub(r"[{}()]", "", a).lower() == re.sub(r"[{}()]", "", b).lower():
        return True
    if re.match(r"[(\[].+[)\]]", pred) and re.match(r"[(\[].+[)\]]", ref):       # tuples, intervals
        ps, rs = pred[1:-1].split(","), ref[1:-1].split(",")
        if len(ps) == len(rs) and all(math_equal(x, y, include_percentage) for x, y in zip(ps, rs)):
            return True
    if _is_matrix(pred) and _is_matrix(ref) and _matrices_equal(pred, ref, include_percentage):
        return True
    if pred.count("=") == 1 and ref.count("=") == 1:
        lp, rp = pred.split("=")
        lr, rr = ref.split("=")
        diff_p, diff_r = f"{lp.strip()} - ({rp.strip()})", f"{lr.strip()} - ({rr.strip()})"
        if symbolic_equal(diff_p, diff_r) or symbolic_equal(f"-({diff_p})", diff_r):
            return True
    elif pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in ref:
        if math_equal(pred.split("=")[1], ref, include_percentage):
            return True
    elif ref.count("=") == 1 and len(ref.split("=")[0].strip()) <= 2 and "=" not in pred:
        if math_equal(pred, ref.split("=")[1], include_percentage):
            return True
    return symbolic_equal(pred, ref)


def _choice(pred: str) -> str:
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    return (letters[-1] if letters else pred.strip().strip(".")).rstrip(".").rstrip("/")


def _to_pmatrix(s: str) -> str:
    rows = re.findall(r"\{.*,.*\}", s.strip())
    return ", ".join("\\begin{pmatrix}" + m.strip("{}").replace(",", "\\") + "\\end{pmatrix}" for m in rows)


_MATRIX = re.compile(r"\\begin\{[pb]matrix\}(.*)\\end\{[pb]matrix\}$", re.S)


def _is_matrix(s: str) -> bool:
    return bool(_MATRIX.match(s))


def _matrices_equal(a: str, b: str, include_percentage: bool) -> bool:
    def cells(s):
        return [[c for c in row.strip().split("&")] for row in _MATRIX.match(s).group(1).split("\\\\") if row.strip()]
    ra, rb = cells(a), cells(b)
    return len(ra) == len(rb) and all(len(x) == len(y) and all(math_equal(p, q, include_percentage)
                                                                for p, q in zip(x, y)) for x, y in zip(ra, rb))


def _parse(s: str):
    """A sympy object for `s` (LaTeX first, then Python syntax), or the string when nothing parses."""
    try:
        from latex2sympy2_extended import latex2sympy
    except ImportError:
        latex2sympy = None
    try:
        from sympy.parsing.sympy_parser import parse_expr
    except ImportError:
        return s
    for parse in (latex2sympy, parse_expr):
        if parse is None:
            continue
        for text in (s.replace("\\\\", "\\"), s):
            try:
                return parse(text)
            except Exception:
                continue
    return s


def symbolic_equal(a: str, b: str) -> bool:
    x, y = _parse(a), _parse(b)
    checks = (lambda: str(x) == str(y) or x == y,
              lambda: x.equals(y) or _simplify(x - y) == 0,
              lambda: abs(x.lhs - x.rhs).equals(abs(y.lhs - y.rhs)),
              lambda: _close(float(_n(x)), float(_n(y))),
              lambda: x.shape == y.shape and x.applyfunc(lambda v: round(v, 3)).equals(
                  y.applyfunc(lambda v: round(v, 3))))
    for check in checks:
        try:
            if check():
                return True
        except Exception:
            continue
    return False


def _simplify(e):
    from sympy import simplify
    return simplify(e)


def _n(e):
    from sympy import N
    return N(e)


# ---- the published scorers, with a timeout ---------------------------------------------------------------------

class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """SIGALRM-based; a no-op outside the main thread (signals cannot be set there)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(*_):
        raise _Timeout()
    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def score_math(response: str | None, gold, timeout_s: float = 5) -> bool:
    """SkyThought's math check: strip(extract_answer(response)) math_equal strip(gold) (extract_answer strips
    too: the handler strips the prediction twice, and so do we)."""
    try:
        with _time_limit(timeout_s):
            return bool(math_equal(strip_answer(extract_answer(response)), strip_answer(gold)))
    except _Timeout:
        return False


def score_mcq(response: str | None, gold_letter) -> bool:
    """SkyThought's GPQA check: the last standalone A, B, C or D in the upper-cased response."""
    letters = re.findall(r"\b(A|B|C|D)\b", (response or "").upper())
    pick = letters[-1] if letters else (response or "").strip().strip(".")
    return pick.rstrip(".").rstrip("/") == str(gold_letter).strip()
