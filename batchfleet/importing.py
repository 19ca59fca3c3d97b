"""Resolve ``module:function`` references (processors, custom uploaders)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from batchfleet.errors import ProcessorLoadError

__all__ = ["load_callable"]


def load_callable(ref: str) -> Callable[..., Any]:
    """Import ``module:function`` (or ``module.function``) and check it is callable."""
    module_name, sep, attr = ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ProcessorLoadError(f"{ref!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProcessorLoadError(f"cannot import {module_name!r} for {ref!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ProcessorLoadError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ProcessorLoadError(f"{ref!r} is not callable")
    return target  # type: ignore[no-any-return]
