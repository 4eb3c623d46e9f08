"""One registry type for methods and tasks.

Built-in plugins and third-party ones arrive the same way: through an entry-point group
(`moebench.methods`, `moebench.tasks`) whose targets are imported only when first asked for.
`register()` adds entries at run time (tests, notebooks).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
from importlib import import_module, metadata
from typing import Callable, Generic, Iterator, TypeVar

from moebench.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind  # "method" / "task", used in messages
        self.entry_point_group = entry_point_group
        self._targets: dict[str, str | T] = {}  # name -> "module:attr" or the loaded object
        self._scanned = False

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            self._targets.setdefault(ep.name, ep.value)

    def register(self, name: str, target: str | T) -> None:
        self._scan()
        if name in self._targets and self._targets[name] != target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._targets[name] = target

    def names(self) -> list[str]:
        self._scan()
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        self._scan()
        return name in self._targets

    def get(self, name: str) -> T:
        self._scan()
        if name not in self._targets:
            raise UsageError(unknown_name_message(self.kind, name, self.names()))
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(import_module(module), attr)
            self._targets[name] = target
        return target

    def description(self, name: str) -> str:
        """The entry's one-line `description` (see `declared`)."""
        return self.declared(name, "description", "")

    def declared(self, name: str, attribute: str, default=None):
        """A class attribute the entry declares as a literal (`description`, `control`,
        `board_columns`), read from its source without importing it: methods import torch, and
        neither `moebench list` nor a board built from an export should wait for it. An entry
        whose value is not a literal in its source is imported and asked."""
        self._scan()
        target = self._targets.get(name)
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            value = literal_class_attribute(module, attr, attribute)
            if value is not NOT_LITERAL:
                return value
        return getattr(self.get(name), attribute, default)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


NOT_LITERAL = object()  # what `literal_class_attribute` returns when the source cannot say


def literal_class_attribute(module: str, class_name: str, attribute: str, depth: int = 0):
    """The value of `class class_name: attribute = <literal>` in `module`'s source, found without
    running it; where the class body does not set it, its base class's (a base imported with
    `from module import Base`, as plugins import `moebench.method.Method`). NOT_LITERAL when the
    source is not at hand, the value is no literal, or a base cannot be followed."""
    try:
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (ImportError, AttributeError, TypeError, ValueError, OSError, SyntaxError):
        return NOT_LITERAL
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    if len(classes) != 1 or classes[0].decorator_list or classes[0].keywords:
        return NOT_LITERAL  # a decorator or a metaclass may set the attribute
    if any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and s.name == attribute for s in classes[0].body):
        return NOT_LITERAL  # a property or method: only running it can say
    for statement in reversed(classes[0].body):  # the last assignment is the one that holds
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
            try:
                return ast.literal_eval(statement.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return NOT_LITERAL
    bases = classes[0].bases
    if not bases:
        return NOT_LITERAL  # no base that could hold it: the attribute is not declared
    if len(bases) != 1 or not isinstance(bases[0], ast.Name) or depth > 8:
        return NOT_LITERAL
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == bases[0].id:
                    return literal_class_attribute(node.module, alias.name, attribute, depth + 1)
    # a base defined in the same module
    if any(isinstance(node, ast.ClassDef) and node.name == bases[0].id for node in tree.body):
        return literal_class_attribute(module, bases[0].id, attribute, depth + 1)
    return NOT_LITERAL


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}"


def registry_decorator(registry: Registry[T]) -> Callable[[str], Callable[[T], T]]:
    def decorator(name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            registry.register(name, obj)
            return obj

        return wrap

    return decorator


METHODS: Registry = Registry("method", "moebench.methods")
TASKS: Registry = Registry("task", "moebench.tasks")
register_method = registry_decorator(METHODS)
register_task = registry_decorator(TASKS)
