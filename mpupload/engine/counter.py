"""A shared-memory byte counter: one signed 64-bit slot per worker, no lock on the hot path.

Each worker only ever writes its own slot (``add``), so a plain aligned 64-bit store is enough; the
parent only reads (``total``). A slot can go down: a retried part takes back the bytes it had counted.
The coordinator resets the slot of a worker that died (no one else writes it then).
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes
from typing import Any

__all__ = ["ByteCounter", "CancelFlag"]


class ByteCounter:
    def __init__(self, slots: int, *, array: Any = None) -> None:
        self._array = array if array is not None else multiprocessing.sharedctypes.RawArray(ctypes.c_int64, slots)
        self.slots = slots

    def __getstate__(self) -> dict[str, Any]:
        # RawArray pickles only while a process is being started (spawn/forkserver), which is when we need it.
        return {"slots": self.slots, "array": self._array}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._array = state["array"]
        self.slots = state["slots"]

    def add(self, slot: int, n: int) -> None:
        self._array[slot] += n

    def get(self, slot: int) -> int:
        return int(self._array[slot])

    def set(self, slot: int, value: int) -> None:
        self._array[slot] = value

    def total(self) -> int:
        return int(sum(self._array))


class CancelFlag:
    """A lock-free shared boolean: a killed worker can never leave it locked."""

    def __init__(self, *, value: Any = None) -> None:
        self._value = value if value is not None else multiprocessing.sharedctypes.RawValue(ctypes.c_int8, 0)

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self._value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._value = state["value"]

    def set(self) -> None:
        self._value.value = 1

    def clear(self) -> None:
        """Lower the flag: a run of several objects goes on after one of them failed (and set it)."""
        self._value.value = 0

    def is_set(self) -> bool:
        return bool(self._value.value)
