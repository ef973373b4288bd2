"""The one idiom every model family uses for its sizes.

Each family has a frozen dataclass config (every field with a one-line reason), two instances --
``SMALL``, CPU-sized, the registry default, and ``PAPER``, the published sizes -- and builders
``name(num_classes, in_channels=3, paper=False, **overrides)`` that call :func:`configure`::

    config = configure(PAPER if paper else SMALL, **overrides)

A family with a table of published sizes takes one more keyword naming the row to start from
instead (SegFormer ``variant="b0".."b5"``, SETR ``encoder="vit_b16"``); the overrides then apply
to that row. ``tests/test_registry.py`` holds every registered builder to this, and checks each
``PAPER`` against its published parameter count.
"""

from __future__ import annotations

import dataclasses

__all__ = ["configure"]


def configure(base, **overrides):
    """``base`` (a frozen dataclass) with the fields in ``overrides`` replaced.

    An unknown name raises a ``ValueError`` that lists the fields, instead of the ``TypeError``
    of ``dataclasses.replace`` -- a misspelt override must not pass silently or cryptically.
    """
    if not dataclasses.is_dataclass(base) or isinstance(base, type):
        raise ValueError(f"base must be a dataclass config instance, got {type(base).__name__}")
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {type(base).__name__} field(s) {unknown}; "
                         f"valid fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(base, **overrides)
