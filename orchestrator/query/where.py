"""`--where` filters: a tiny expression language parsed into a `pyarrow.compute` expression.

    val_accuracy >= 0.95 and latency_ms_sweep < 0.2 or prune.method == "structured"

Grammar (keywords are case-insensitive; `and` binds tighter than `or`):

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
    operand    := column | number | "string" | 'string' | true | false | null

A bare operand must be a boolean column (`feasible`, `is_baseline`). Columns are names with
dots (`prune.ratio`); metric names follow the one rule of `orchestrator.space.metrics` (the
bare `accuracy` is refused, name `val_accuracy` or `test_accuracy`). Timestamps compare with
ISO strings (`started_at >= "2025-01-01"`, UTC when no zone is given). A comparison with a
null value is null, so that row is left out. The text is tokenised and parsed by hand: nothing
is ever evaluated as Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|<|>|=)
  | (?P<paren>[()])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false", "null"}
_MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class _Token:
    kind: str  # number | string | op | paren | name | keyword | end
    text: str
    pos: int  # 0-based character offset in the expression


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _syntax(text, pos, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        word = match.group()
        if kind == "name" and word.lower() in _KEYWORDS:
            tokens.append(_Token("keyword", word.lower(), pos))
        elif kind == "op" and word == "=":
            raise _syntax(text, pos, "'=' is not a comparison; use '==' for equality")
        elif kind != "space":
            tokens.append(_Token(kind, word, pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _syntax(text: str, pos: int, problem: str) -> SqueezerayError:
    pointer = " " * pos + "^"
    return SqueezerayError(
        f"--where syntax error at position {pos + 1}: {problem}\n  {text}\n  {pointer}\n"
        "accepted: comparisons (== != < <= > >=) of columns with numbers, quoted strings or "
        "true/false, joined by and/or/not and parentheses, e.g. val_accuracy >= 0.95 and "
        'prune.method == "structured"'
    )


@dataclass(frozen=True)
class _Operand:
    kind: str  # column | number | string | bool | null
    value: Any
    pos: int


class _Parser:
    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.text = text
        self.schema = schema
        self.tokens = _tokenize(text)
        self.i = 0

    # -- token helpers --
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept_keyword(self, word: str) -> bool:
        if self.peek().kind == "keyword" and self.peek().text == word:
            self.i += 1
            return True
        return False

    # -- grammar --
    def parse(self) -> pc.Expression:
        if self.peek().kind == "end":
            raise _syntax(self.text, 0, "the expression is empty")
        expr = self.expr()
        token = self.peek()
        if token.kind != "end":
            raise _syntax(self.text, token.pos, f"unexpected {token.text!r}; expected and/or")
        return expr

    def expr(self) -> pc.Expression:
        expr = self.and_expr()
        while self.accept_keyword("or"):
            expr = expr | self.and_expr()
        return expr

    def and_expr(self) -> pc.Expression:
        expr = self.not_expr()
        while self.accept_keyword("and"):
            expr = expr & self.not_expr()
        return expr

    def not_expr(self) -> pc.Expression:
        if self.accept_keyword("not"):
            return ~self.not_expr()
        token = self.peek()
        if token.kind == "paren" and token.text == "(":
            self.take()
            expr = self.expr()
            close = self.peek()
            if not (close.kind == "paren" and close.text == ")"):
                raise _syntax(
                    self.text, close.pos, f"expected ')' to close the '(' at {token.pos + 1}"
                )
            self.take()
            return expr
        return self.comparison()

    def comparison(self) -> pc.Expression:
        left = self.operand()
        token = self.peek()
        if token.kind != "op":
            if left.kind == "column" and self._is_bool(left.value):
                import pyarrow.compute as pc

                return pc.field(left.value)
            raise _syntax(
                self.text, token.pos, f"expected a comparison operator after {left.value!r}"
            )
        self.take()
        right = self.operand()
        return self._compare(left, token.text, right)

    def operand(self) -> _Operand:
        token = self.take()
        if token.kind == "number":
            number = float(token.text)
            value: Any = int(token.text) if re.fullmatch(r"[-+]?\d+", token.text) else number
            return _Operand("number", value, token.pos)
        if token.kind == "string":
            body = token.text[1:-1]
            return _Operand("string", re.sub(r"\\(.)", r"\1", body), token.pos)
        if token.kind == "keyword" and token.text in ("true", "false"):
            return _Operand("bool", token.text == "true", token.pos)
        if token.kind == "keyword" and token.text == "null":
            return _Operand("null", None, token.pos)
        if token.kind == "name":
            if token.text not in self.schema.names:
                from orchestrator.space.metrics import resolve_metric

                # the one naming rule: a bare `accuracy` names no column, it is ambiguous
                resolve_metric("--where", token.text, purpose="filter", columns=self.schema.names)
                from orchestrator.space.checks import did_you_mean

                hint = did_you_mean(token.text, self.schema.names)
                raise SqueezerayError(
                    f"--where: unknown column {token.text!r}{hint}; available columns: "
                    f"{', '.join(self.schema.names)}"
                )
            return _Operand("column", token.text, token.pos)
        found = "the end" if token.kind == "end" else repr(token.text)
        raise _syntax(self.text, token.pos, f"expected a column or a value, found {found}")

    # -- semantics --
    def _is_bool(self, column: str) -> bool:
        import pyarrow as pa

        return bool(pa.types.is_boolean(self.schema.field(column).type))

    def _compare(self, left: _Operand, op: str, right: _Operand) -> pc.Expression:
        import pyarrow.compute as pc

        if left.kind != "column" and right.kind == "column":
            left, op, right = right, _MIRROR[op], left
        if left.kind != "column":
            raise _syntax(self.text, left.pos, "a comparison needs a column on one side")
        if right.kind == "null":
            raise _syntax(self.text, right.pos, "comparisons with null are always null")
        if right.kind == "column":
            value: Any = pc.field(right.value)
        else:
            value = self._literal(left.value, right)
        function = getattr(pc.field(left.value), f"__{_dunder(op)}__")
        return function(value)  # type: ignore[no-any-return]

    def _literal(self, column: str, operand: _Operand) -> Any:
        import pyarrow as pa

        dtype = self.schema.field(column).type
        numeric = pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
        wanted = None
        if numeric and operand.kind != "number":
            wanted = "a number"
        elif (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)) and (
            operand.kind != "string"
        ):
            wanted = "a quoted string"
        elif pa.types.is_boolean(dtype) and operand.kind != "bool":
            wanted = "true or false"
        elif pa.types.is_timestamp(dtype):
            if operand.kind != "string":
                wanted = 'an ISO date in quotes, e.g. "2025-01-31" or "2025-01-31T12:00"'
            else:
                return self._timestamp(operand, dtype)
        if wanted:
            shown = repr(operand.value) if operand.kind == "string" else str(operand.value).lower()
            raise SqueezerayError(
                f"--where: column {column!r} is {dtype}, so compare it with {wanted}, not {shown}"
            )
        return operand.value

    def _timestamp(self, operand: _Operand, dtype: pa.DataType) -> Any:
        import pyarrow as pa

        try:
            moment = datetime.fromisoformat(str(operand.value))
        except ValueError:
            raise _syntax(
                self.text, operand.pos, f"{operand.value!r} is not an ISO date/time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return pa.scalar(moment, type=dtype)


def _dunder(op: str) -> str:
    return {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[op]


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Parse a `--where` string against `schema` into a pyarrow compute expression.

    Raises SqueezerayError for a syntax error (with the position marked), an unknown column
    (listing the available ones) or a literal of the wrong type for its column.
    """
    return _Parser(text, schema).parse()


def columns_of(text: str) -> list[str]:
    """The column names a `--where` string mentions (for messages); no schema check."""
    return [t.text for t in _tokenize(text) if t.kind == "name"]
