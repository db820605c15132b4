"""The ``calculator`` environment: the arithmetic task with a calculator tool.

``calculator`` evaluates an arithmetic expression by walking its syntax tree (``ast``), never
with ``eval``: integers and decimals, ``+ - * /``, ``//``, ``%``, ``**`` (exponent at most
``MAX_EXPONENT``), unary signs and parentheses.  Arithmetic is exact (fractions); a result that
is not an integer is shown with up to 6 decimals.  Anything else (names, calls, attributes,
strings, huge numbers) is an error message the model reads, as is a division by zero.
"""
from __future__ import annotations

import ast
from fractions import Fraction

from rlkit.agents.env import Environment

MAX_LENGTH = 200          # characters of an expression
MAX_EXPONENT = 64
MAX_DIGITS = 60           # digits of any intermediate value

_BINARY = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: Fraction(a // b), ast.Mod: lambda a, b: a % b,
}


class CalcError(ValueError):
    pass


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(Fraction(str(node.value)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = _value(node.left), _value(node.right)
        if exp.denominator != 1 or abs(exp) > MAX_EXPONENT:
            raise CalcError(f"exponents must be whole numbers up to {MAX_EXPONENT}")
        if base == 0 and exp < 0:
            raise CalcError("division by zero")
        return _checked(base ** int(exp))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise CalcError("division by zero")
        return _checked(_BINARY[type(node.op)](a, b))
    raise CalcError(f"unsupported element {type(node).__name__}; use numbers, + - * / // % ** and parentheses")


def _checked(v: Fraction) -> Fraction:
    if len(str(abs(v.numerator))) > MAX_DIGITS or len(str(v.denominator)) > MAX_DIGITS:
        raise CalcError("number too large")
    return v


def _show(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    text = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: An arithmetic expression with numbers, + - * / and parentheses, e.g. "(12 + 7) * 3".
    """
    if not isinstance(expression, str) or not expression.strip():
        return "Error: give the expression as a non-empty string"
    if len(expression) > MAX_LENGTH:
        return f"Error: expression longer than {MAX_LENGTH} characters"
    cleaned = expression.replace("×", "*").replace("÷", "/").replace(",", "")
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
        return _show(_value(tree.body))
    except CalcError as exc:
        return f"Error: {exc}"
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return "Error: not an arithmetic expression"


_EXAMPLES = (  # (question, expression, value): worked episodes shown before the question
    ("What is 48 * 12?", "48 * 12", "576"),
    ("Ava has 15 apples and buys 27 more. Then she gives away 9. How many apples does she have now?",
     "15 + 27 - 9", "33"),
)


def _call(expression: str) -> str:
    return '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>' % expression


class CalculatorEnv(Environment):
    """Arithmetic with a calculator: tool results come back until a turn calls no tool.

    ``examples`` (0-2): worked episodes put before the question as earlier turns of the
    conversation (question, a calculator call, its result, ``#### value``), so a small model
    sees the call layout in use; they are part of the prompt, never trained on."""

    tools = (calculator,)

    def __init__(self, examples: int = 2):
        if not 0 <= examples <= len(_EXAMPLES):
            raise ValueError(f"examples must be between 0 and {len(_EXAMPLES)}, got {examples}")
        self.examples = examples

    def reset(self, row):
        shown = []
        for question, expression, value in _EXAMPLES[: self.examples]:
            shown += [{"role": "user", "content": question}, {"role": "assistant", "content": _call(expression)},
                      {"role": "tool", "content": value}, {"role": "assistant", "content": f"#### {value}"}]
        return shown + super().reset(row)
