"""A MIDI parser that misbehaves on named files, for the parse tests to inject into the stage.

The stage pickles its parser into each worker process, which imports this module by name: a
run with a FaultyParser needs this folder on the workers' PYTHONPATH (`worker_env`).
"""

from __future__ import annotations

import fnmatch
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipelines import midi
from pipelines.parse import MidiParser

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class FaultyParser(MidiParser):
    """The real parser, except on the files whose base name matches a fault's pattern (fnmatch).

    Faults, as (action, pattern): `sleep` (hang for an hour), `sleep=<seconds>`, `abort`
    (os.abort(), as a segfaulting parser would die), `allocate` (grab memory in 64 MB steps up to
    four times the worker's memory limit), `stdout` (print to stdout, as a chatty import or C
    code would) and `garble` (send the stage bytes that are not a frame).
    """

    faults: tuple[tuple[str, str], ...] = ()

    def __call__(self, name: str, data: bytes) -> midi.FileNotes:
        base = PurePosixPath(name).name
        for action, pattern in self.faults:
            if fnmatch.fnmatch(base, pattern):
                misbehave(action)
        return super().__call__(name, data)


def misbehave(action: str) -> None:
    if action == "sleep":
        time.sleep(3600)
    elif action.startswith("sleep="):
        time.sleep(float(action.removeprefix("sleep=")))
    elif action == "abort":
        os.abort()
    elif action == "stdout":
        print("stray output", flush=True)
        os.write(1, b"\x00" * 64)
    elif action == "garble":
        answers = int(sys.argv[1])  # a worker process's answer pipe (workers.worker_main)
        os.write(answers, b"not a frame, and then some")
    elif action == "allocate":
        limit, _ = resource.getrlimit(resource.RLIMIT_AS)
        if limit == resource.RLIM_INFINITY:
            raise RuntimeError("the worker runs without a memory limit")
        hoard = []
        for _ in range(4 * (limit >> 20) // 64):
            # Address space, as RLIMIT_AS counts it; untouched, so the fault is quick.
            hoard.append(np.empty(64 << 17))
        del hoard
    else:
        raise ValueError(f"unknown fault {action!r}")


def worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this folder first on PYTHONPATH, so that worker
    processes can unpickle a FaultyParser."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env
