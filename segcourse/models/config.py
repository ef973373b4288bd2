"""The one idiom every model family uses for its sizes.

Each family has a frozen dataclass config (every field with a reason), a ``PAPER`` instance with
the published sizes and a CPU-sized default, and builders
``name(num_classes, in_channels=3, paper=False, **overrides)`` that call :func:`configure`::

    config = configure(PAPER if paper else SMALL, **overrides)
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
