"""CEL conditions compiled to NumPy, to evaluate a whole batch of rows at once.

Only CEL's operators are compiled: literals (double, int, uint, bool, string,
null), variables, ``! - * / % + - < <= > >= == != in && || ?:``, parentheses
and list literals on the right of ``in``. Anything else (macros, functions,
member access, maps) raises :class:`Unsupported`, and the caller evaluates that
condition with the CEL runtime instead.

The condition has been type-checked by the CEL runtime first (stream.worker.rules.audiences),
so types do not need checking here: a double is never compared with a string.
Integer arithmetic (only ever on literals: no variable is an int) and unsigned
integers are left to the CEL runtime, whose int64 rules (truncating division,
errors on zero and overflow) are its own; double arithmetic is IEEE in both
(1.0 / 0.0 is +Inf).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Node = tuple[Any, ...]


class Unsupported(ValueError):
    """A construct this compiler leaves to the CEL runtime."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<float>(?:\d+\.\d+(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+))
  | (?P<uint>(?:0x[0-9a-fA-F]+|\d+)[uU])
  | (?P<int>0x[0-9a-fA-F]+|\d+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|[<>!?:()+\-*/%\[\],.{}])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise Unsupported(f"cannot read {text[pos : pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group()
        if kind == "ws":
            continue
        if kind == "float":
            out.append(("lit", float(value)))
        elif kind == "uint":
            raise Unsupported("unsigned integers")
        elif kind == "int":
            out.append(("lit", int(value, 0)))
        elif kind == "string":
            if value[0] in "rRbB":
                raise Unsupported("raw and bytes strings")
            body = re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), "\x00"), value[1:-1])
            if "\x00" in body:
                raise Unsupported("string escapes beyond \\n \\t \\r \\\\ \\' \\\"")
            out.append(("lit", body))
        elif kind == "ident":
            if value in ("true", "false"):
                out.append(("lit", value == "true"))
            elif value == "null":
                out.append(("lit", None))
            elif value == "in":
                out.append(("op", "in"))
            else:
                out.append(("ident", value))
        else:
            out.append(("op", value))
    out.append(("end", None))
    return out


class _Parser:
    """CEL's grammar for operators, by precedence (lowest first)."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self, op: str | None = None) -> tuple[str, Any]:
        tok = self.toks[self.i]
        if op is not None and tok != ("op", op):
            raise Unsupported(f"expected {op!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "end":
            raise Unsupported("trailing input")
        return node

    def expr(self) -> Node:
        cond = self.binary(0)
        if self.peek() == ("op", "?"):
            self.take()
            yes = self.binary(0)
            self.take(":")
            return ("?", cond, yes, self.expr())
        return cond

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("<", "<=", ">", ">=", "==", "!=", "in"),
        ("+", "-"),
        ("*", "/", "%"),
    )

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in self._LEVELS[level]:
            op = self.take()[1]
            right = self.list_literal() if op == "in" else self.binary(level + 1)
            node = (op, node, right)
        return node

    def list_literal(self) -> Node:
        if self.peek() != ("op", "["):
            raise Unsupported("'in' on something other than a list literal")
        self.take()
        items: list[Node] = []
        while self.peek() != ("op", "]"):
            items.append(self.expr())
            if self.peek() == ("op", ","):
                self.take()
            elif self.peek() != ("op", "]"):
                raise Unsupported("list literal")
        self.take("]")
        return ("list", *items)

    def unary(self) -> Node:
        tok = self.peek()
        if tok in (("op", "!"), ("op", "-")):
            self.take()
            return ("neg" if tok[1] == "-" else "not", self.unary())
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        if self.peek() in (("op", "."), ("op", "["), ("op", "(")):
            raise Unsupported("member access, indexing and function calls")
        return node

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "lit":
            return ("lit", value)
        if kind == "ident":
            if self.peek() == ("op", "("):
                raise Unsupported(f"function {value}()")
            return ("var", value)
        if (kind, value) == ("op", "("):
            node = self.expr()
            self.take(")")
            return node
        raise Unsupported(f"unexpected {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+":
        return np.add(a, b) if not isinstance(a, str) else a + b
    if op == "-":
        return np.subtract(a, b)
    if op == "*":
        return np.multiply(a, b)
    if op == "/":
        return np.divide(a, b)
    return np.fmod(a, b)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _eval(node: Node, columns: Mapping[str, Any]) -> Any:
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "var":
        return columns[node[1]]
    if op == "not":
        return np.logical_not(_eval(node[1], columns))
    if op == "neg":
        return np.negative(_eval(node[1], columns))
    if op == "?":
        cond = _eval(node[1], columns)
        return np.where(cond, _eval(node[2], columns), _eval(node[3], columns))
    if op == "&&":
        return np.logical_and(_eval(node[1], columns), _eval(node[2], columns))
    if op == "||":
        return np.logical_or(_eval(node[1], columns), _eval(node[2], columns))
    if op == "in":
        left = _eval(node[1], columns)
        items = [_eval(n, columns) for n in node[2][1:]]
        out: Any = False
        for item in items:
            out = np.logical_or(out, _COMPARE["=="](left, item))
        return out
    if op in _COMPARE:
        return _COMPARE[op](_eval(node[1], columns), _eval(node[2], columns))
    if op in ("+", "-", "*", "/", "%"):
        return _arith(op, _eval(node[1], columns), _eval(node[2], columns))
    raise Unsupported(op)  # pragma: no cover - the parser makes no other nodes


def compile_numpy(
    text: str, known: Mapping[str, str]
) -> Callable[[Mapping[str, Any], int], np.ndarray]:
    """A function of (columns, rows) -> bool array, or :class:`Unsupported`."""
    tree = _Parser(text).parse()
    _check(tree, known)

    def evaluate(columns: Mapping[str, Any], n: int) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = _eval(tree, columns)
        return np.broadcast_to(np.asarray(result, dtype=bool), (n,)).copy()

    return evaluate


def _const_int(node: Node) -> bool:
    """Whether a subtree is integer arithmetic on literals (no variable is an int)."""
    if node[0] == "lit":
        return _is_int(node[1])
    if node[0] in ("neg", "+", "-", "*", "/", "%"):
        return all(_const_int(c) for c in node[1:] if isinstance(c, tuple))
    return False


def _check(node: Node, known: Mapping[str, str]) -> None:
    if node[0] == "var" and node[1] not in known:
        raise Unsupported(f"unknown variable {node[1]!r}")
    if node[0] in ("neg", "+", "-", "*", "/", "%") and _const_int(node):
        # CEL's int64 rules (truncating division, errors on zero and on
        # overflow, absorbed by || and &&) are the CEL runtime's to apply.
        raise Unsupported("integer arithmetic")
    for child in node[1:]:
        if isinstance(child, tuple):
            _check(child, known)


#: A comparison read the other way round: ``5.0 < x`` is ``x > 5.0``.
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def thresholds(text: str, variables: set[str]) -> set[tuple[str, str, float]]:
    """(variable, operator, constant) of every comparison of one of ``variables``
    with a number, the variable on the left: where the condition can flip as
    time alone passes. Empty for a condition this module does not parse."""
    try:
        tree = _Parser(text).parse()
    except Unsupported:
        return set()
    found: set[tuple[str, str, float]] = set()

    def walk(node: Node) -> None:
        if node[0] in _COMPARE:
            for a, b, op in ((node[1], node[2], node[0]), (node[2], node[1], _MIRROR[node[0]])):
                if a[0] == "var" and a[1] in variables and b[0] == "lit":
                    value = b[1]
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        found.add((a[1], op, float(value)))
        for child in node[1:]:
            if isinstance(child, tuple) and child and isinstance(child[0], str):
                walk(child)

    walk(tree)
    return found
