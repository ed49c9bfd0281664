"""A batch job with no MIDI in it, to test the worker pool (pipelines.workers) on its own.

Worker processes unpickle it by this module's name: a run needs this folder on their PYTHONPATH
(faulty_parsers.worker_env).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from faulty_parsers import misbehave


@dataclass(frozen=True)
class TallyJob:
    """Items (name, text) -> a file of "name length" lines; the summary is the lines' count.

    Misbehaves like faulty_parsers.FaultyParser on the items whose name matches a fault's pattern.
    """

    faults: tuple[tuple[str, str], ...] = ()

    stage: ClassVar[str] = "tally"
    doing: ClassVar[str] = "tallying"
    process: ClassVar[str] = "tally"

    def prepare(self) -> None:
        pass

    def run(self, path: str, items: list[tuple[Any, ...]], answer: Callable[[tuple], None]) -> Any:
        lines = []
        for index, name, text in items:
            for action, pattern in self.faults:
                if fnmatch.fnmatch(name, pattern):
                    misbehave(action)
            answer((index, "ok", len(text)))
            lines.append(f"{name} {len(text)}")
        tmp = f"{path}.{os.getpid()}.tmp"
        Path(tmp).write_text("\n".join(lines))
        Path(tmp).replace(path)
        return len(lines)

    def empty(self, path: str) -> Any:
        Path(path).write_text("")
        return 0
