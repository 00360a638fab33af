"""Where metrics go: `metrics.jsonl` and TensorBoard events in the workdir, and a progress line."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO


class MetricWriter:
    """Appends `{"step": s, name: value, ...}` lines to `workdir/metrics.jsonl`, and writes
    TensorBoard scalars to `workdir/tensorboard` when tensorboardX is installed."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._enabled = enabled
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                return
            self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps({'step': step, **scalars}) + '\n')
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def truncate(self, step: int) -> None:
        """Drops the records after `step` (a resumed run takes those steps again)."""
        if not self._enabled or not os.path.isfile(self.path):
            return
        kept = [r for r in read_metrics(os.path.dirname(self.path)) if r['step'] <= step]
        tmp = self.path + '.partial'
        with open(tmp, 'w') as f:
            f.write(''.join(json.dumps(r) + '\n' for r in kept))
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of `workdir/metrics.jsonl`, in order."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A progress bar with step, loss, img/s and ETA; redrawn in place on a terminal."""

    def __init__(self, total_steps: int, batch: int, stream: TextIO | None = None, width: int = 24):
        self.stream = sys.stdout if stream is None else stream
        self.total, self.batch, self.width = total_steps, batch, width
        self._tty = self.stream.isatty()
        self._mark = (time.perf_counter(), 0)

    def restart(self, step: int) -> None:
        """Measures speed from `step` on (e.g. after the first, compiling step)."""
        self._mark = (time.perf_counter(), step)

    def update(self, step: int, scalars: dict[str, float]) -> float:
        """Draws the bar at `step`; returns img/s since the previous update."""
        now = time.perf_counter()
        seconds, steps = now - self._mark[0], step - self._mark[1]
        self._mark = (now, step)
        steps_per_s = steps / seconds if seconds > 0 else 0.0
        eta = (self.total - step) / steps_per_s if steps_per_s else 0.0
        done = int(self.width * step / self.total)
        stats = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items())
        line = (f'step {step}/{self.total} [{"=" * done}{" " * (self.width - done)}] {stats} '
                f'{steps_per_s * self.batch:,.0f} img/s ETA {_clock(eta)}')
        self.stream.write(('\r' + line + '\033[K') if self._tty else line + '\n')
        self.stream.flush()
        return steps_per_s * self.batch

    def print(self, text: str) -> None:
        """Prints a line of its own (below the bar on a terminal)."""
        self.stream.write(('\n' if self._tty else '') + text + '\n')
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    return f'{minutes // 60}:{minutes % 60:02d}:{sec:02d}'
