"""Several named, resumable batch iterators checkpointed as one grain item.

A task names its inputs (``{"train": ..., "source": ...}`` or ``{"train": ..., "val": ...}``);
each step says which it eats, so zipping is just eating several in the same step. The
checkpoint holds every input's position: a run resumed mid-epoch sees the same batches.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping


class NamedInputs:
    """``next_for(names)`` -> {name: batch}; ``get_state``/``set_state`` cover all of them.

    Each input is an iterator with ``get_state()`` (JSON-serialisable) and ``set_state()``,
    like grain's ``DatasetIterator`` or `hfrjax.data.pipeline.TrainInput`.
    """

    def __init__(self, inputs: Mapping[str, Iterator]):
        if not inputs:
            raise ValueError("a task must supply at least one input")
        for name, it in inputs.items():
            if not (hasattr(it, "get_state") and hasattr(it, "set_state")):
                raise TypeError(
                    f"input {name!r} ({type(it).__name__}) is not resumable: it needs "
                    "get_state() and set_state()"
                )
        self.inputs = dict(inputs)

    def next_for(self, names: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for n in names:
            if n not in self.inputs:
                raise KeyError(f"step eats input {n!r}; the task supplies {sorted(self.inputs)}")
            out[n] = next(self.inputs[n])
        return out

    def get_state(self) -> bytes:
        return json.dumps({n: it.get_state() for n, it in self.inputs.items()}).encode()

    def set_state(self, state: bytes) -> None:
        d = json.loads(state)
        missing = set(self.inputs) - set(d)
        if missing:
            raise ValueError(
                f"the checkpoint holds the positions of inputs {sorted(d)}, not of "
                f"{sorted(missing)}: was it written by another task?"
            )
        for n, it in self.inputs.items():
            it.set_state(d[n])

    def start_prefetch(self) -> None:
        for it in self.inputs.values():
            it = getattr(it, "iterator", it)  # A TrainInput's grain iterator.
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()

    def close(self) -> None:
        for it in self.inputs.values():
            it = getattr(it, "iterator", it)
            close = getattr(it, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing must not hide the real error.
                    pass
