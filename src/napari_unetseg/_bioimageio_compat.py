"""Make bioimageio.spec 0.5.12 serialise under pydantic >= 2.14.

bioimageio.spec 0.5.12.0 (the version bioimageio.core 0.11.0 pins) calls pydantic's
wrap-serializer handler as ``handler(value, info)`` in two serializers
(``_internal.io_packaging.package_file_descr_serializer`` and ``model.v0_4.package_weights``).
The handler's second positional parameter is an ``index_key`` (an int or str for error
locations), and pydantic-core 2.50 (pydantic 2.14) rejects the ``SerializationInfo`` there:
``TypeError: 'index_key' is expected to be an integer or a string``, so no model
description with a file in it can be validated, written or loaded. (With pydantic 2.13
the same calls pass: the argument was not checked.)

:func:`patch` gives both functions a body that calls the original with a handler taking the
value alone, ``handler(value)``, the call pydantic documents. Pydantic's compiled schemas hold
the function objects themselves, so the fix replaces their code in place rather than the
module attributes. It is idempotent and harmless where the library is already fixed.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["patch"]

_ORIGINAL = "_napari_unetseg_original"


class _ValueOnly:
    """A wrap-serializer handler that drops every argument after the value."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def __call__(self, value: Any, *_: Any) -> Any:
        return self.handler(value)


def _fixed(value: Any, handler: Any, info: Any) -> Any:  # runs with the library's globals
    return _napari_unetseg_original(value, _napari_unetseg_handler(handler), info)  # noqa: F821


def _patch_function(func: types.FunctionType) -> None:
    glb = func.__globals__
    name = f"{_ORIGINAL}_{func.__name__}"
    if name in glb:
        return
    glb[name] = types.FunctionType(func.__code__, glb, func.__name__, func.__defaults__,
                                   func.__closure__)
    glb["_napari_unetseg_handler"] = _ValueOnly
    code = _fixed.__code__.replace(
        co_names=tuple(name if n == "_napari_unetseg_original" else n
                       for n in _fixed.__code__.co_names),
        co_name=func.__name__,
    )
    func.__code__ = code


def patch() -> None:
    """Fix the two serializers of bioimageio.spec (see the module docstring)."""
    from bioimageio.spec._internal import io_packaging
    from bioimageio.spec.model import v0_4

    for func in (io_packaging.package_file_descr_serializer, v0_4.package_weights):
        if isinstance(func, types.FunctionType) and func.__code__.co_argcount == 3:
            _patch_function(func)
