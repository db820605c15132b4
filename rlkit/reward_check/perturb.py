"""Reference answers, perturbed answers and degenerate outputs per task, for ``rlkit reward-check``.

A perturber has ``reference(row) -> str`` (the row's right answer, written as a completion the
task's rewards read), ``perturb(row, reference) -> [(kind, text)]`` (the reference made wrong in
one place) and ``degenerate(row, reference) -> [(kind, text)]`` (outputs a policy drifts into:
empty, the prompt echoed, the reference repeated, a very long output, the right format with a
wrong answer, the answer without its format). Optional: ``ties_ok`` (kinds that keep the
reference's answer, only in a degenerate shape: there a score *above* the reference's is a hole,
a tie is not) and ``group(row)`` (rows whose references may score differently, such as ToolRL's
tool-call and response-only rows, each group having its own maximum). ``PERTURBERS`` holds the
built-in ones; ``rlkit reward-check --perturber module:object`` plugs in another.

Every variant of the "wrong" kinds is checked to really be wrong, independently of the reward
under test, and dropped when it is not: math compares the final numbers exactly, SQL runs the
query against the gold one (``rewards.sql.execution_match``), tool calls compare the call lists.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

REPEATS = 8  # answer_repeated: the reference this many times
FILLER = "Let me go over the reasoning once more to be thorough. "  # no digits, no answer markers
FILLER_REPEATS = 300  # long_output: about 16,000 characters of filler after the reference
TIES_OK = frozenset({"answer_repeated", "long_output", "unformatted_answer"})


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text: a string as it is, chat messages' contents joined."""
    if isinstance(prompt, list):
        return "\n\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return "" if prompt is None else str(prompt)


class Perturber:
    """The degenerate outputs every task shares; subclasses write the task's parts."""

    name = "base"
    ties_ok = TIES_OK

    def reference(self, row: dict) -> str:
        raise NotImplementedError

    def perturb(self, row: dict, reference: str) -> list[tuple[str, str]]:
        return []

    def group(self, row: dict) -> str:  # rows whose references may score differently (their own maximum)
        return ""

    def wrong_format(self, row: dict, reference: str) -> str | None:
        """The reference's format around a wrong answer (None: no such output for this row)."""
        return None

    def unformatted(self, row: dict, reference: str) -> str | None:
        """The reference's answer with its format removed."""
        return None

    def still_right(self, row: dict, text: str) -> bool:
        """True when ``text`` still gives the row's right answer (such a "wrong" variant is dropped)."""
        return False

    def degenerate(self, row: dict, reference: str) -> list[tuple[str, str]]:
        out = [("empty", ""), ("prompt_echo", prompt_text(row.get("prompt"))),
               ("answer_repeated", "\n\n".join([reference] * REPEATS)),
               ("long_output", reference + "\n\n" + FILLER * FILLER_REPEATS),
               ("right_format_wrong_answer", self.wrong_format(row, reference)),
               ("unformatted_answer", self.unformatted(row, reference))]
        return self._checked([(k, t) for k, t in out if t is not None], row)

    def _checked(self, variants: list[tuple[str, str]], row: dict) -> list[tuple[str, str]]:
        """The variants without the "wrong" ones that are still right, one per text and kind."""
        seen, out = set(), []
        for kind, text in variants:
            if (kind, text) in seen or (kind not in self.ties_ok and self.still_right(row, text)):
                continue
            seen.add((kind, text))
            out.append((kind, text))
        return out


# ---- math ------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"(?:(?<![\w)\]])-)?(?:\d[\d,]*(?:\.\d+)?(?:/\d+)?|\.\d+)")  # "7-7": 7 and 7


def as_fraction(text: Any) -> Fraction | None:
    """An integer, decimal or a/b (thousands commas, $ and a final '.' allowed) as a Fraction."""
    s = str(text).strip().strip("$").rstrip(".").replace(",", "").replace(" ", "")
    if not re.fullmatch(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?", s):
        return None
    num, _, den = s.partition("/")
    return Fraction(num) / Fraction(den) if den and int(den) else (None if den else Fraction(num))


def format_number(value: Fraction) -> str:
    """An exact value as text: an integer, a terminating decimal, else a/b."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = 60
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")


def _last_boxed(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the last ``\\boxed{...}`` (braces matched)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return begin + 1, i
    return None


def final_answer(text: str) -> str | None:
    """The final answer a reader takes from a math text: the first token after the last
    ``####``, else the last ``\\boxed{}``, else the last number (the checker's own reading,
    independent of the reward under test)."""
    if "####" in text:
        line = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        return line.split()[0] if line.split() else None
    span = _last_boxed(text)
    if span:
        return text[span[0]:span[1]].strip()
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def same_answer(a: Any, b: Any) -> bool:
    fa, fb = as_fraction(a), as_fraction(b)
    if fa is not None and fb is not None:
        return fa == fb
    return a is not None and b is not None and str(a).replace(" ", "") == str(b).replace(" ", "")


class MathPerturber(Perturber):
    """Math word problems (GSM8K ``#### n`` solutions, MATH ``\\boxed{}`` solutions, bare answers).

    The reference is the gold solution when it has ``####`` or ``\\boxed``, else ``#### <answer>``.
    Perturbations change the final answer only (the working stays): ±1, ×10, negated, a digit
    dropped or appended, the last intermediate number instead, and a hedge ("73 or 72 or 71",
    the right answer among wrong ones). A non-numeric answer (MATH: ``\\frac{\\pi}{2}``) gets
    ``<answer>+1``. ``unformatted_answer`` is the bare right answer: a correctness reward that
    reads the last number rightly takes it (a tie); the format reward is the one to penalise it.
    """

    name = "math"

    def reference(self, row: dict) -> str:
        answer = "" if row.get("answer") is None else str(row["answer"]).strip()
        return answer if ("####" in answer or "\\boxed" in answer or not answer) else f"#### {answer}"

    def gold(self, row: dict) -> str | None:
        return final_answer(self.reference(row))

    @staticmethod
    def with_answer(reference: str, answer: str) -> str:
        """The reference with its final answer replaced."""
        if "####" in reference:
            head, _, tail = reference.rpartition("####")
            rest = tail.strip(" \t").partition("\n")[2]
            return f"{head}#### {answer}" + (f"\n{rest}" if rest else "")
        span = _last_boxed(reference)
        if span:
            return reference[:span[0]] + answer + reference[span[1]:]
        return f"#### {answer}"

    def wrong_answers(self, gold: str) -> list[tuple[str, str]]:
        value = as_fraction(gold)
        if value is None:
            return [("plus_one", f"{gold}+1")]
        plain = format_number(value)
        out = [("plus_one", format_number(value + 1)), ("minus_one", format_number(value - 1)),
               ("times_ten", format_number(value * 10)), ("negated", format_number(-value)),
               ("append_digit", plain + ("1" if "." in plain or value != 0 else "7"))]
        if value.denominator == 1 and abs(value) >= 10:
            out.append(("drop_digit", plain[:-1]))
        out.append(("hedged", f"{format_number(value + 1)} or {plain} or {format_number(value - 1)}"))
        return out

    def perturb(self, row: dict, reference: str) -> list[tuple[str, str]]:
        gold = self.gold(row)
        if gold is None:
            return []
        out = [(kind, self.with_answer(reference, wrong)) for kind, wrong in self.wrong_answers(gold)]
        head = reference.rsplit("####", 1)[0] if "####" in reference else ""
        earlier = [n for n in _NUMBER_RE.findall(head) if not same_answer(n, gold)]
        if earlier:
            out.append(("last_intermediate", self.with_answer(reference, earlier[-1].replace(",", ""))))
        return self._checked(out, row)

    def wrong_format(self, row: dict, reference: str) -> str | None:
        gold = self.gold(row)
        if gold is None:
            return None
        wrong = self.wrong_answers(gold)[0][1]
        return f"#### {wrong}" if "####" in reference else f"The answer is $\\boxed{{{wrong}}}$."

    def unformatted(self, row: dict, reference: str) -> str | None:
        return self.gold(row)

    def still_right(self, row: dict, text: str) -> bool:
        return same_answer(final_answer(text), self.gold(row))


# ---- SQL -------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```sql\n(.*?)\n```", re.DOTALL)
_FLIP = {"EQ": "NEQ", "NEQ": "EQ", "GT": "LT", "LT": "GT", "GTE": "LTE", "LTE": "GTE"}
_AGG_SWAP = {"Avg": "Sum", "Sum": "Avg", "Max": "Min", "Min": "Max"}


def sql_completion(sql: str) -> str:
    """A completion in the format ``rewards.sql`` reads (``extract_sql``, ``format_ok``, also with
    ``reasoning_tag="think"``): a short reasoning block, then one closing ```sql block."""
    return f"<think>\nThe query below answers the question.\n</think>\n```sql\n{sql.strip()}\n```"


def _table_columns(db_path: str, table: str) -> list[str]:
    from rewards.sql_sandbox import ReadOnlyDatabase

    with ReadOnlyDatabase(db_path) as db:
        info = db.query(f'PRAGMA table_info("{table}")', 5.0, 10_000)
    return [str(r[1]) for r in info.rows] if info.ok else []


class SQLPerturber(Perturber):
    """Text-to-SQL rows with ``gold_sql`` and ``db_path`` (Spider format, the sql_demo task).

    The reference is the gold query in a ```sql block after a short ``<think>`` block. The
    perturbations edit the gold query's syntax tree (sqlglot): a literal changed, a comparison
    flipped, the WHERE clause or one of its conditions dropped, a selected column swapped for
    another of its table, the aggregate changed, DISTINCT, GROUP BY, ORDER BY or LIMIT dropped,
    the sort direction flipped. A perturbed query whose result still equals the gold one on the
    row's database (``rewards.sql.execution_match``) is dropped: it is not wrong there.
    """

    name = "sql"

    def reference(self, row: dict) -> str:
        return sql_completion(str(row.get("gold_sql") or row.get("query") or ""))

    def perturb(self, row: dict, reference: str) -> list[tuple[str, str]]:
        import sqlglot

        gold = str(row.get("gold_sql") or row.get("query") or "")
        try:
            tree = sqlglot.parse_one(gold, read="sqlite")
        except Exception:  # noqa: BLE001 - a query sqlglot cannot read gets no perturbations
            return []
        out = []
        for kind, edit in self._edits(row):
            copy = tree.copy()
            try:
                changed = edit(copy)
                sql = copy.sql(dialect="sqlite") if changed else None
            except Exception:  # noqa: BLE001 - an edit that does not fit this query is skipped
                sql = None
            if sql and sql != tree.sql(dialect="sqlite"):
                out.append((kind, sql_completion(sql)))
        return self._checked(out, row)

    def _edits(self, row: dict) -> list[tuple[str, Any]]:
        from sqlglot import exp

        def where(tree: Any) -> Any:
            return tree.args.get("where")
        def change_literal(tree: Any) -> bool:
            node = next(iter((where(tree) or tree).find_all(exp.Literal)), None)
            if node is None:
                return False
            if node.is_string:
                node.replace(exp.Literal.string(node.this + "_x"))
            else:
                node.replace(exp.Literal.number(format_number(Fraction(node.this) + 1)))
            return True

        def flip_comparison(tree: Any) -> bool:
            node = next((n for n in (where(tree) or tree).find_all(exp.Binary) if type(n).__name__ in _FLIP), None)
            if node is None:
                return False
            node.replace(getattr(exp, _FLIP[type(node).__name__])(this=node.this, expression=node.expression))
            return True

        def drop(key: str) -> Any:
            def edit(tree: Any) -> bool:
                if not tree.args.get(key):
                    return False
                tree.set(key, None)
                return True
            return edit

        def drop_condition(tree: Any) -> bool:
            cond = where(tree).this if where(tree) else None
            if not isinstance(cond, exp.Connector):
                return False
            cond.replace(cond.this)
            return True

        def swap_column(tree: Any) -> bool:
            return self._swap_column(tree, row, exp)

        def change_aggregate(tree: Any) -> bool:
            node = next(iter(tree.find_all(exp.AggFunc)), None)
            name = type(node).__name__ if node is not None else ""
            if name in _AGG_SWAP:
                node.replace(getattr(exp, _AGG_SWAP[name])(this=node.this))
                return True
            if name == "Count" and not isinstance(node.this, exp.Distinct):
                target = node.this
                if isinstance(target, exp.Star):
                    table = next(iter(tree.find_all(exp.Table)), None)
                    columns = _table_columns(row["db_path"], table.name) if table and row.get("db_path") else []
                    if not columns:
                        return False
                    target = exp.column(columns[-1], table=table.alias_or_name)
                node.replace(exp.Count(this=exp.Distinct(expressions=[target.copy()])))
                return True
            return False

        def flip_order(tree: Any) -> bool:
            node = next(iter(tree.find_all(exp.Ordered)), None)
            if node is None:
                return False
            node.set("desc", not node.args.get("desc"))
            return True

        return [("change_literal", change_literal), ("flip_comparison", flip_comparison),
                ("drop_where", drop("where")), ("drop_condition", drop_condition), ("swap_column", swap_column),
                ("change_aggregate", change_aggregate), ("drop_distinct", drop("distinct")),
                ("drop_group_by", drop("group")), ("drop_order_by", drop("order")), ("drop_limit", drop("limit")),
                ("flip_order", flip_order)]

    @staticmethod
    def _swap_column(tree: Any, row: dict, exp: Any) -> bool:
        """The first selected column replaced by another column of its table (read from the db)."""
        if not row.get("db_path"):
            return False
        aliases = {t.alias_or_name.lower(): t.name for t in tree.find_all(exp.Table)}
        for projection in getattr(tree, "expressions", []):
            column = next(iter(projection.find_all(exp.Column)), None)
            if column is None:
                continue
            tables = [aliases[column.table.lower()]] if column.table else list(dict.fromkeys(aliases.values()))
            for table in tables:
                names = _table_columns(row["db_path"], table)
                if column.name.lower() in (n.lower() for n in names):
                    others = [n for n in names if n.lower() != column.name.lower()]
                    if not others:
                        return False
                    column.set("this", exp.to_identifier(others[0]))
                    return True
        return False

    def wrong_format(self, row: dict, reference: str) -> str | None:
        gold = str(row.get("gold_sql") or "")
        table = re.search(r"\bfrom\s+([\"`\[]?\w+[\"`\]]?)", gold, re.IGNORECASE)
        return sql_completion(f"SELECT * FROM {table.group(1)}" if table else "SELECT 1")

    def unformatted(self, row: dict, reference: str) -> str | None:
        return str(row.get("gold_sql") or "") or None

    def still_right(self, row: dict, text: str) -> bool:
        from rewards.sql import execution_match

        fenced = _FENCE_RE.findall(text)
        if not fenced or not row.get("gold_sql") or not row.get("db_path"):
            return False
        try:
            return execution_match(fenced[-1], row["gold_sql"], row["db_path"])
        except Exception:  # noqa: BLE001 - the gold query fails: nothing can be shown wrong
            return True


# ---- tool calls ------------------------------------------------------------------------------

_TAG_RE = re.compile(r"</?(?:think|tool_call|response)>")


def _canonical(calls: list[dict]) -> list[str]:
    """Calls as sorted canonical JSON: order-free (the calls of one block are issued together)."""
    return sorted(json.dumps({"name": c.get("name"), "parameters": c.get("parameters", {})}, sort_keys=True)
                  for c in calls)


def _changed(value: Any) -> Any:
    """Another JSON value: not a bool, +1, "_x" appended, a list or object grown, else "x"."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float, str)):
        return value + (1 if not isinstance(value, str) else "_x")
    if isinstance(value, (list, dict)):
        return (value + (value[:1] or ["x"])) if isinstance(value, list) else {**value, "x": 1}
    return "x"


class ToolCallPerturber(Perturber):
    """ToolRL / BFCL rows (``ground_truth``: the reference assistant text with its tags).

    The reference is ``ground_truth`` as it is. Perturbations rewrite the tool-call block of the
    reference (after its ``</think>``): a parameter value changed, a parameter dropped, a
    parameter added, the tool renamed (to another tool of the row, else ``<name>_x``), one of
    several calls dropped, a call duplicated. ``reordered_calls`` is in ``ties_ok``: the calls
    of one block are issued together (ToolRL scores them order-free, spec section 6; BFCL's
    parallel checker too), so another order is the same answer, and only a score above the
    reference's is a hole. Rows whose reference has no call (response only) get no
    perturbation: a free-text response cannot be shown wrong.
    """

    name = "toolcall"
    ties_ok = TIES_OK | {"reordered_calls"}

    def reference(self, row: dict) -> str:
        return str(row.get("ground_truth") or "")

    def group(self, row: dict) -> str:
        from rewards.toolrl import reference_layout

        return "+".join(reference_layout(self.reference(row)))

    @staticmethod
    def calls(reference: str) -> list[dict]:
        from rewards.toolrl import reference_calls

        try:
            return reference_calls(reference)
        except ValueError:
            return []

    @staticmethod
    def with_calls(reference: str, calls: list[dict]) -> str:
        """The reference with the lines of its tool-call block replaced by ``calls``."""
        think = max(reference.find("</think>"), 0)
        start = reference.find("<tool_call>", think)
        end = reference.find("</tool_call>", start)
        lines = "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)
        return reference[:start] + "<tool_call>\n" + lines + "\n" + reference[end:]

    def _other_tool(self, row: dict, calls: list[dict]) -> str:
        used = {c["name"] for c in calls}
        names = [t.get("name") for t in row.get("tools") or [] if isinstance(t, dict)]
        return next((n for n in names if isinstance(n, str) and n not in used), calls[0]["name"] + "_x")

    def perturb(self, row: dict, reference: str) -> list[tuple[str, str]]:
        calls = self.calls(reference)
        if not calls:
            return []
        out = []

        def variant(kind: str, new: list[dict]) -> None:
            out.append((kind, self.with_calls(reference, new)))

        with_params = next((i for i, c in enumerate(calls) if c["parameters"]), None)
        if with_params is not None:
            call = calls[with_params]
            key = next(iter(call["parameters"]))
            for kind, params in (("change_value", {**call["parameters"], key: _changed(call["parameters"][key])}),
                                 ("drop_param", {k: v for k, v in call["parameters"].items() if k != key})):
                variant(kind, [*calls[:with_params], {**call, "parameters": params}, *calls[with_params + 1:]])
        first = calls[0]
        variant("extra_param", [{**first, "parameters": {**first["parameters"], "extra_param": "x"}}, *calls[1:]])
        variant("rename_tool", [{**first, "name": self._other_tool(row, calls)}, *calls[1:]])
        if len(calls) > 1:
            variant("drop_call", calls[:-1])
            if calls != calls[::-1]:
                variant("reordered_calls", calls[::-1])
        variant("duplicate_call", [*calls, calls[0]])
        return self._checked(out, row)

    def wrong_format(self, row: dict, reference: str) -> str | None:
        calls = self.calls(reference)
        return self.with_calls(reference, [{"name": self._other_tool(row, calls), "parameters": {}}]) if calls else None

    def unformatted(self, row: dict, reference: str) -> str | None:
        think = reference.find("</think>")
        bare = _TAG_RE.sub("", reference[think + len("</think>"):] if think >= 0 else reference).strip()
        return bare or None

    def still_right(self, row: dict, text: str) -> bool:
        calls = self.calls(self.reference(row))
        if not calls or "</think>" not in text or "<tool_call>" not in text:
            return False
        return _canonical(self.calls(text)) == _canonical(calls)


PERTURBERS: dict[str, Perturber] = {"math": MathPerturber(), "sql": SQLPerturber(), "toolcall": ToolCallPerturber()}
