"""A calculator tool: arithmetic on numbers, evaluated from the syntax tree (``ast``), never executed.

Load it with ``glm-agent tools tools/calculator.py`` or ``ToolRegistry().load("tools/calculator.py")``.
Only numbers, + - * / // % **, parentheses, a few math functions and constants
are accepted; anything else (names, attributes, calls of other functions) is
refused with a message the model can act on. Every operand and result is bounded
(integers to ``MAX_INT_BITS`` bits, ``round``'s digits to ``MAX_ROUND_DIGITS``,
factorials to ``MAX_FACTORIAL``) and huge powers are refused before they are
computed, so the work per call is bounded by construction and a request cannot hang
the agent.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from glm_agent import tool

__all__ = ["calculate"]

MAX_EXPRESSION_CHARS = 1000
MAX_INT_BITS = 4096
MAX_FACTORIAL = 1000
MAX_ROUND_DIGITS = 1250  # 10**1250 > 2**4096: more digits change nothing for an operand within MAX_INT_BITS

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError("factorial() takes a non-negative whole number")
    if n > MAX_FACTORIAL:
        raise ValueError(f"factorial() is limited to n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(number: Any, digits: Any = None) -> Any:
    if digits is None:
        return round(number)
    if not isinstance(digits, int) or isinstance(digits, bool):
        raise ValueError("round()'s second argument is a whole number of digits")
    if abs(digits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round() takes between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS} digits")
    return round(number, digits)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "degrees": math.degrees,
    "radians": math.radians,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
    "gcd": math.gcd,
    "hypot": math.hypot,
}


def _check_size(value: Any) -> Any:
    if isinstance(value, complex):
        raise ValueError("the result is a complex number; only real results are supported")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise ValueError(f"{base} ** {exponent} is too large to compute")
    return base**exponent


def _evaluate_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate_node(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        raise ValueError(f"only numbers are allowed, not {node.value!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate_node(node.left), _evaluate_node(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        return _check_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check_size(_UNARY[type(node.op)](_evaluate_node(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ValueError(f"unknown name {node.id!r}; known constants: {', '.join(_CONSTANTS)}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        function = _FUNCTIONS.get(node.func.id)
        if function is None:
            raise ValueError(f"unknown function {node.func.id!r}; known functions: {', '.join(_FUNCTIONS)}")
        return _check_size(function(*(_check_size(_evaluate_node(arg)) for arg in node.args)))
    if isinstance(node, ast.Call):
        raise ValueError("only the listed functions can be called, by name and with positional arguments")
    raise ValueError(f"{type(node).__name__} is not allowed; use numbers, + - * / // % **, parentheses and functions")


@tool
def calculate(
    expression: Annotated[str, "An arithmetic expression, e.g. '(3 + 4) * 2 ** 0.5' or 'sqrt(2) * pi'"],
) -> int | float:
    """Evaluate an arithmetic expression and return the number.

    Supports + - * / // % ** (``^`` also means power) and parentheses, the constants pi, e, tau and the
    functions abs, round, min, max, sqrt, exp, log, log10, log2, sin, cos, tan,
    asin, acos, atan, degrees, radians, floor, ceil, factorial, gcd and hypot.
    """
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise ValueError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a valid arithmetic expression: {exc.msg}") from None
    try:
        result: int | float = _evaluate_node(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("the result is too large for a floating-point number") from None
    except RecursionError:
        raise ValueError("the expression is nested too deeply") from None
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        return int(result)
    return result
