"""Progress of long loops: a bar on a terminal, plain lines in a log (a CI job), nothing under `robustdeploy -q`."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

log = logging.getLogger("robustdeploy")


def progress(total: int, desc: str, unit: str = "step", lines: int = 10) -> Iterator[tuple[int, tqdm]]:
    """Yield (index, bar) for range(total), with at most `lines` log lines off a terminal; `bar.set_postfix(...)`
    shows figures, which the log lines repeat."""
    quiet = not log.isEnabledFor(logging.INFO)
    bar = tqdm(range(total), desc=desc, unit=unit, file=sys.stderr, disable=True if quiet else None)
    every, start = max(1, total // max(1, lines)), time.perf_counter()
    for i in bar:
        yield i, bar
        if bar.disable and not quiet and ((i + 1) % every == 0 or i + 1 == total):
            log.info("%s: %s %d/%d (%.1f s)%s", desc, unit, i + 1, total, time.perf_counter() - start,
                     f": {bar.postfix}" if bar.postfix else "")
