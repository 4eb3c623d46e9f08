"""A method's typed hyper-parameters (its `Params` dataclass) from the strings a command line,
a YAML file or a search gives, and back to a plain dict for MLflow params.

Apart from `moebench.method` (whose hooks take torch objects), so a run configuration is
checked, and a board built, without importing torch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from moebench.errors import UsageError


def parse_params(method_cls: type, overrides: dict[str, str]) -> Any:
    """Build `method_cls.Params` from string overrides, naming the bad key or value."""
    fields = {f.name: f for f in dataclasses.fields(method_cls.Params)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise UsageError(f"{method_cls.name} has no hyper-parameter {key!r}; valid: {valid}")
        default = getattr(method_cls.Params(), key)
        kind = type(default)
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                values[key] = raw.lower() in ("true", "1")
            else:
                values[key] = kind(raw)
                if kind is float and not math.isfinite(values[key]):
                    raise ValueError
        except ValueError:
            expected = "a finite float" if kind is float else kind.__name__
            raise UsageError(f"{method_cls.name}.{key} expects {expected}, got {raw!r}") from None
    try:
        return method_cls.Params(**values)
    except ValueError as error:  # Params.__post_init__ range checks
        raise UsageError(f"{method_cls.name}: {error}") from None


def params_as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
