"""Progress of long loops: a tqdm bar with the rate and the time left on a terminal, plain lines with the same
figures in a log (a CI job), nothing under `robustdeploy -q`."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

log = logging.getLogger("robustdeploy")
HEARTBEAT = 60.0  # seconds between the lines of a long step that has no loop of its own to report


def progress(total: int, desc: str, unit: str = "step", lines: int = 10, leave: bool = True,
             after: float = 0.0) -> Iterator[tuple[int, tqdm]]:
    """Yield (index, bar) for range(total), with at most `lines` log lines off a terminal (0: none, for loops
    whose caller reports each finish itself); `bar.set_postfix(...)` shows figures, which the log lines repeat.
    `leave=False` clears the bar once done (inner loops); `after` seconds hide the bar and the lines of a loop
    until it has run that long (loops that are long only on big data)."""
    quiet = not log.isEnabledFor(logging.INFO)
    bar = tqdm(range(total), desc=desc, unit=unit, file=sys.stderr, disable=True if quiet else None, leave=leave,
               dynamic_ncols=True, delay=after)
    every, start = max(1, total // max(1, lines)), time.perf_counter()
    for i in bar:
        yield i, bar
        seconds = time.perf_counter() - start
        if bar.disable and not quiet and lines > 0 and seconds >= after and ((i + 1) % every == 0 or i + 1 == total):
            figures = getattr(bar, "postfix", None)  # set only once the loop calls set_postfix
            log.info("%s: %s %d/%d (%s)%s", desc, unit, i + 1, total,
                     pace(i + 1, total, seconds, unit), f": {figures}" if figures else "")


def pace(done: int, total: int, seconds: float, unit: str) -> str:
    """'00:12 elapsed, 3.40 batch/s, 00:05 left': the figures of tqdm's bar, for a log line."""
    rate = done / seconds if seconds > 0 else float("inf")
    speed = f"{rate:.2f} {unit}/s" if rate >= 1 else f"{seconds / done:.2f} s/{unit}"
    left = (total - done) / rate if rate > 0 else 0.0
    return f"{tqdm.format_interval(seconds)} elapsed, {speed}, {tqdm.format_interval(left)} left"


class Meter:
    """Progress of work counted in units (batches, queries) inside one step of a loop: a tqdm bar on a terminal,
    off one a log line every EVERY seconds with the rate and the time left; nothing under `-q`. For loops whose
    steps are long (an epoch, a search block), so that the first figure comes within seconds."""

    EVERY = 5.0  # seconds between log lines
    REFRESH = 0.5  # seconds between counts given as a function

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = max(1, total), desc, unit
        self.quiet = not log.isEnabledFor(logging.INFO)
        self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, disable=True if self.quiet else None,
                        leave=False, dynamic_ncols=True, delay=1.0)
        self.start = self.last = self.seen = time.perf_counter()
        self.done = 0

    def update(self, done: int | Callable[[], int]) -> None:
        """`done` units of `total` finished so far; a function giving it is called only when a figure is due
        (every REFRESH seconds: counting may wait for a GPU)."""
        now = time.perf_counter()
        if self.quiet or (callable(done) and now - self.seen < self.REFRESH):
            return
        self.seen = now
        done = min(done() if callable(done) else done, self.total)
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done
        if self.bar.disable and now - self.last >= self.EVERY and self.done < self.total:
            self.last = now
            figures = pace(self.done, self.total, now - self.start, self.unit) if self.done else \
                f"{tqdm.format_interval(now - self.start)} elapsed, none done yet"
            log.info("%s: %s %d/%d (%s)", self.desc, self.unit, self.done, self.total, figures)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def heartbeat(desc: str, figures: Callable[[], str] | None = None) -> Iterator[None]:
    """A line every HEARTBEAT seconds while the block runs (e.g. an attack on a single batch, which would otherwise
    be silent until it ends), with `figures()` (work done so far) appended; nothing under `robustdeploy -q`."""
    if not log.isEnabledFor(logging.INFO):
        yield
        return
    stop, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            extra = figures() if figures else ""
            log.info("%s: running, %s elapsed%s", desc, tqdm.format_interval(time.perf_counter() - start),
                     f" ({extra})" if extra else "")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
