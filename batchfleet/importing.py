"""Resolve ``module:function`` references (processors, custom uploaders)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from batchfleet.errors import ProcessorLoadError

__all__ = ["check_call", "load_callable"]


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ProcessorLoadError(f"cannot import {module_name!r}: {exc}") from exc


def _module_only(ref: str) -> bool:
    """Whether ``ref`` (no ``:``) names an importable module rather than module.function."""
    try:
        importlib.import_module(ref)
    except ImportError:
        return False
    return True


def load_callable(ref: str) -> Callable[..., Any]:
    """Import ``module:function`` (or ``module.function``) and check it is callable.  Errors say what
    is wrong with ``ref`` in one line (the caller adds which setting it came from)."""
    ref = ref.strip()
    module_name, sep, attr = ref.partition(":")
    if not sep:
        if ref and _module_only(ref):
            raise ProcessorLoadError(f"{ref!r} is a module: name the function too, as {ref}:FUNCTION")
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ProcessorLoadError(f"{ref!r} is not of the form module:function")
    target: Any = _import(module_name)
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ProcessorLoadError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ProcessorLoadError(f"{ref!r} is a {type(target).__name__}, not a function")
    return target  # type: ignore[no-any-return]


def check_call(fn: Callable[..., Any], ref: str, call: str, positional: int) -> None:
    """Raise ProcessorLoadError unless ``fn`` can be called with ``positional`` positional arguments
    (as ``call`` shows).  Callables without an inspectable signature pass."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*(None for _ in range(positional)))
    except TypeError as exc:
        raise ProcessorLoadError(f"{ref} has the signature {signature}, but is called as {call} ({exc})") from exc
