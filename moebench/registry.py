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
        """The entry's one-line `description`, read from its source without importing it when it
        is a literal class attribute (methods import torch, and `moebench list` must answer at once)."""
        self._scan()
        target = self._targets.get(name)
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            text = literal_class_attribute(module, attr, "description")
            if text is not None:
                return text
        return getattr(self.get(name), "description", "")

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


def literal_class_attribute(module: str, class_name: str, attribute: str) -> str | None:
    """`class class_name: attribute = "..."` in `module`'s source, found without running it; None
    when the source is not at hand or the value is not a string literal."""
    try:
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (ImportError, AttributeError, TypeError, ValueError, OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
                value = getattr(statement, "value", None)
                if (any(isinstance(t, ast.Name) and t.id == attribute for t in targets)
                        and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    return value.value
    return None


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
