"""Entry points: ``package.module:attribute`` strings that name a factory to call.

Owns: parsing and resolving them with a typed error. Does not own calling the factory or
checking what it returns (the caller knows what it expects).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from appliance.errors import ConfigError
from appliance.format.shown import a_or_an

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def load_entry_point(spec: str, what: str) -> Any:
    """The object ``spec`` names; ``ConfigError`` naming ``what`` if it cannot be resolved."""
    if not _SPEC.fullmatch(spec):
        raise ConfigError(f"{what} {spec!r:.120} is not of the form package.module:factory")
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name}: {exc}") from exc
    except AttributeError as exc:
        raise ConfigError(f"{what} {spec!r}: {module_name} has no {attr_path}") from exc
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r} names {a_or_an(type(obj).__name__)}, not a callable factory")
    return obj
