"""What a command prints while it works: progress bars on or off."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator


@contextlib.contextmanager
def bars(show: bool) -> Iterator[None]:
    """With ``show`` False, the progress bars drawn inside (tqdm writes to ``sys.stderr``)
    are not shown: stderr is held in memory and dropped, while errors still propagate as
    exceptions. Used around the data generators of ``sim/``, whose sources key every cached
    dataset (``sim.generate.sim_code_fingerprint``): a presentation option there would make
    every dataset, probe cell and experiment cell be recomputed."""
    if show:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
