"""Test cases: how one is declared, kept, selected and how it ends.

A case is an ``async def`` taking a :class:`~conformance.suite.context.Context`, declared with
:func:`case`, which records the clause of GB/T 28181-2016 and -2022 it checks, the grade of the
national test centre's self-test tool it belongs to, and the roles and editions of the target it
applies to. Its docstring states the steps and the pass criteria; the reports print it.

A case ends by returning (pass), by raising :class:`CaseFailed` (the target broke a rule: what
was expected, what was seen, the SIP messages involved), by raising :class:`CaseSkipped` (the
target lacks an optional feature), or by any other exception (an error of the suite or of the
environment, not a verdict on the target).

Selection follows pytest's ``-k``: case-insensitive substrings of "ID title" joined with
``and``, ``or``, ``not`` and parentheses.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from conformance.suite.options import EDITIONS, ROLES, Options

if TYPE_CHECKING:
    from conformance.suite.context import Context
    from conformance.suite.trace import TraceEntry

# The self-test tool's grades A–E, the 2022 additions, and robustness.
GRADES = ("A", "B", "C", "D", "E", "2022", "R")

CASES_PACKAGE = "conformance.suite.cases"

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


class _Unset:
    """Marks "not given" where ``None`` is a value worth reporting (a missing header)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


class CaseFailed(AssertionError):
    """The target broke a rule. ``expected`` and ``seen`` are any repr-able values (left
    :data:`UNSET` when they say nothing); ``messages`` are the trace entries involved."""

    def __init__(
        self,
        message: str,
        expected: Any = UNSET,
        seen: Any = UNSET,
        messages: Iterable[TraceEntry] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.seen = seen
        self.messages: list[TraceEntry] = list(messages or ())

    def __str__(self) -> str:
        parts = [self.message]
        if self.expected is not UNSET:
            parts.append(f"expected {self.expected!r}")
        if self.seen is not UNSET:
            parts.append(f"seen {self.seen!r}")
        return "; ".join(parts)


class CaseSkipped(Exception):
    """The case cannot judge this target (an optional feature it lacks, a setting of the run)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CaseInfo:
    id: str  # e.g. "A-REG-01"
    title: str
    grade: str  # one of GRADES
    clause_2016: str  # "" where the edition lacks it
    clause_2022: str
    roles: frozenset[str]  # roles of the target this case applies to
    editions: frozenset[str]
    func: Callable[[Context], Awaitable[None]]
    doc: str  # steps and pass criteria
    media: bool = False
    operator: int = 0  # how many actions the case asks of an operator (0: none needed)

    def not_applicable(self, options: Options) -> str:
        """Why the case does not apply to this run ("" when it does)."""
        # A cascading platform has the suite's devices below and its upper above, as a
        # gateway does: the gateway's cases apply to it too.
        cascading = options.cascade and "gateway" in self.roles
        if options.target_role not in self.roles and not cascading:
            return (
                f"not for a {options.target_role} target "
                f"(applies to: {', '.join(sorted(self.roles))}"
                + ("; with --cascade also to a platform" if "gateway" in self.roles else "")
                + ")"
            )
        if options.edition not in self.editions:
            return (
                f"not in GB/T 28181-{options.edition} "
                f"(applies to: {', '.join(sorted(self.editions))})"
            )
        if self.media and not options.media_transports:
            return "media checks are off (no media transport)"
        return ""

    @property
    def keywords(self) -> str:
        """What ``-k`` expressions are matched on."""
        return f"{self.id} {self.title}"


# -- -k expressions ------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
_KEYWORDS = ("and", "or", "not")

Matcher = Callable[[str], bool]


def compile_expression(expr: str) -> Matcher:
    """Compile a ``-k`` expression into a predicate on a case's keywords.

    Grammar (pytest's): ``expr := and ("or" and)*``, ``and := not ("and" not)*``,
    ``not := "not" not | "(" expr ")" | word``. A word matches as a case-insensitive substring.
    An empty expression matches everything. Raises ``ValueError`` on a malformed one.
    """
    pos = 0
    tokens: list[str] = []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:  # only trailing whitespace is left
            break
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        return lambda _text: True
    at = 0

    def peek() -> str | None:
        return tokens[at] if at < len(tokens) else None

    def take() -> str:
        nonlocal at
        if at >= len(tokens):
            raise ValueError(f"-k {expr!r}: the expression ends too early")
        at += 1
        return tokens[at - 1]

    def parse_or() -> Matcher:
        parts = [parse_and()]
        while peek() == "or":
            take()
            parts.append(parse_and())
        if len(parts) == 1:
            return parts[0]
        return lambda text: any(p(text) for p in parts)

    def parse_and() -> Matcher:
        parts = [parse_not()]
        while peek() == "and":
            take()
            parts.append(parse_not())
        if len(parts) == 1:
            return parts[0]
        return lambda text: all(p(text) for p in parts)

    def parse_not() -> Matcher:
        token = take()
        if token == "not":
            inner = parse_not()
            return lambda text: not inner(text)
        if token == "(":
            inner = parse_or()
            if take() != ")":
                raise ValueError(f"-k {expr!r}: a parenthesis is not closed")
            return inner
        if token == ")" or token in _KEYWORDS:
            raise ValueError(f"-k {expr!r}: unexpected {token!r}")
        word = token.lower()
        return lambda text: word in text.lower()

    matcher = parse_or()
    if at != len(tokens):
        raise ValueError(f"-k {expr!r}: unexpected {tokens[at]!r}")
    return matcher


# -- the registry --------------------------------------------------------------------------------
class Registry:
    """The cases known to a run, by ID."""

    def __init__(self) -> None:
        self._cases: dict[str, CaseInfo] = {}

    def add(self, info: CaseInfo) -> None:
        old = self._cases.get(info.id)
        if old is not None and not _same_function(old.func, info.func):
            raise ValueError(f"case {info.id} is declared twice ({_where(old.func)})")
        self._cases[info.id] = info

    def get(self, case_id: str) -> CaseInfo:
        return self._cases[case_id]

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._cases

    def __len__(self) -> int:
        return len(self._cases)

    def all(self) -> list[CaseInfo]:
        return sorted(self._cases.values(), key=lambda c: c.id)

    def select(self, options: Options) -> list[CaseInfo]:
        """The cases chosen by ``options.select`` (every expression must match) and
        ``options.grades`` (any of them), sorted by ID. Cases that do not apply to the target's
        role or edition stay in: the runner reports them skipped, with the reason."""
        matchers = [compile_expression(e) for e in options.select]
        grades = {g.upper() for g in options.grades}
        return [
            c
            for c in self.all()
            if (not grades or c.grade.upper() in grades) and all(m(c.keywords) for m in matchers)
        ]

    def case(
        self,
        id: str,
        title: str,
        *,
        grade: str,
        clause_2016: str,
        clause_2022: str,
        roles: Iterable[str],
        editions: Iterable[str] = EDITIONS,
        media: bool = False,
        operator: int = 0,
    ) -> Callable[[F], F]:
        """Declare the decorated coroutine function a case of this registry."""

        def register(func: F) -> F:
            self.add(
                make_case_info(
                    func,
                    id=id,
                    title=title,
                    grade=grade,
                    clause_2016=clause_2016,
                    clause_2022=clause_2022,
                    roles=roles,
                    editions=editions,
                    media=media,
                    operator=operator,
                )
            )
            return func

        return register


def make_case_info(
    func: Callable[..., Awaitable[None]],
    *,
    id: str,
    title: str,
    grade: str,
    clause_2016: str,
    clause_2022: str,
    roles: Iterable[str],
    editions: Iterable[str] = EDITIONS,
    media: bool = False,
    operator: int = 0,
) -> CaseInfo:
    """Check a declaration and build its :class:`CaseInfo` (``ValueError`` when it is wrong)."""
    where = _where(func)
    if not id or any(ch.isspace() for ch in id):
        raise ValueError(f"{where}: a case ID is one word, got {id!r}")
    if not inspect.iscoroutinefunction(func):
        raise ValueError(f"{where}: case {id} must be an async def")
    if grade not in GRADES:
        raise ValueError(f"{where}: case {id} grade {grade!r} is not one of {', '.join(GRADES)}")
    role_set = frozenset(roles)
    if not role_set or not role_set <= set(ROLES):
        raise ValueError(f"{where}: case {id} roles {sorted(role_set)} not within {ROLES}")
    edition_set = frozenset(editions)
    if not edition_set or not edition_set <= set(EDITIONS):
        raise ValueError(f"{where}: case {id} editions {sorted(edition_set)} not within {EDITIONS}")
    if not clause_2016 and not clause_2022:
        raise ValueError(f"{where}: case {id} names no clause")
    if operator < 0:
        raise ValueError(f"{where}: case {id} asks a negative number of actions")
    doc = inspect.cleandoc(func.__doc__ or "")
    if not doc:
        raise ValueError(f"{where}: case {id} needs a docstring with its steps and pass criteria")
    return CaseInfo(
        id=id,
        title=title,
        grade=grade,
        clause_2016=clause_2016,
        clause_2022=clause_2022,
        roles=role_set,
        editions=edition_set,
        func=func,
        doc=doc,
        media=media,
        operator=operator,
    )


def _where(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)!s}"


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """A module imported again (a reload) declares its cases again: not a clash."""
    return a is b or _where(a) == _where(b)


REGISTRY = Registry()
"""The registry :func:`case` fills; the case modules declare into it when imported."""


def case(
    id: str,
    title: str,
    *,
    grade: str,
    clause_2016: str,
    clause_2022: str,
    roles: Iterable[str],
    editions: Iterable[str] = EDITIONS,
    media: bool = False,
    operator: int = 0,
) -> Callable[[F], F]:
    """Declare a case in :data:`REGISTRY` (``operator``: how many actions it asks of someone
    at the target, :mod:`conformance.suite.operator`)::

    @case("A-REG-01", "Registration with digest", grade="A", clause_2016="9.1.2",
          clause_2022="9.1.2", roles=("device",))
    async def register(ctx: Context) -> None:
        \"\"\"Steps ... Pass criteria ...\"\"\"
    """
    return REGISTRY.case(
        id,
        title,
        grade=grade,
        clause_2016=clause_2016,
        clause_2022=clause_2022,
        roles=roles,
        editions=editions,
        media=media,
        operator=operator,
    )


def load_cases() -> list[CaseInfo]:
    """Import :data:`CASES_PACKAGE` and every module in it, so their cases are declared in
    :data:`REGISTRY`; return them all. A missing package gives an empty list; a case module
    that fails to import raises (a broken case must not vanish from the report silently)."""
    try:
        package = importlib.import_module(CASES_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name == CASES_PACKAGE:
            return []
        raise
    paths = getattr(package, "__path__", None)
    if paths is not None:
        for module in pkgutil.walk_packages(paths, prefix=CASES_PACKAGE + "."):
            importlib.import_module(module.name)
    return REGISTRY.all()
