"""Durable record of functions, contexts, workers and invocations (SQLAlchemy 2.x)."""

from faas.store.states import FINAL, State
from faas.store.store import Outcome, Store, sqlite_url

__all__ = ["FINAL", "Outcome", "State", "Store", "sqlite_url"]
