"""The one progress display of long work (model downloads, video jobs): a tqdm bar on stderr.

A :class:`Progress` is a ``progress(done, total)`` callback, so the code doing the work only reports counts
and never draws. tqdm computes rates and ETAs from a smoothed moving average, which stays close to the truth
when the first items are slow (models loading) and the rest fast.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    """``progress(done, total)`` drawn as a tqdm bar labelled ``label`` counting ``unit`` (``B`` for bytes,
    shown in KiB/MiB). ``total`` may be None (unknown) and may grow. ``close()`` ends the line; the bar also
    closes itself when ``done`` reaches ``total``."""

    def __init__(
        self, label: str, unit: str = "it", *, stream: TextIO | None = None, disable: bool = False
    ) -> None:
        byte_counts = unit == "B"
        self._bar = tqdm(
            desc=label,
            unit=unit,
            unit_scale=byte_counts,
            unit_divisor=1024 if byte_counts else 1000,
            file=sys.stderr if stream is None else stream,
            disable=disable,
            dynamic_ncols=True,
            leave=True,
        )

    def __call__(self, done: int, total: int | None) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        if total is not None and done >= total:
            self.close()

    @property
    def rate(self) -> float | None:
        """Items per second so far (tqdm's smoothed rate), or None before any."""
        rate = self._bar.format_dict.get("rate")
        return float(rate) if rate else None

    def close(self) -> None:
        self._bar.close()
