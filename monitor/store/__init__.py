"""The database adapter: engine setup, schema migrations, and the `Store` of records."""

from __future__ import annotations

from monitor.store.engine import create_engine_for, describe_url
from monitor.store.migrations import (
    current_revision,
    downgrade,
    ensure_schema_current,
    head_revision,
    upgrade,
)
from monitor.store.repository import Store

__all__ = [
    "Store",
    "create_engine_for",
    "current_revision",
    "describe_url",
    "downgrade",
    "ensure_schema_current",
    "head_revision",
    "upgrade",
]
