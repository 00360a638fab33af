"""Where metrics go: a `metrics.jsonl` and TensorBoard events (`vit_jax.train.workdir.Workdir` names
them), and a progress line."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, TextIO

from etils import epath

from vit_jax import storage


class MetricWriter:
    """Appends `{"step": s, name: value, ...}` lines to a `metrics.jsonl` (`path`), and writes
    TensorBoard scalars to `tensorboard` when tensorboardX is installed.

    On local disk each line is appended at once. An object in a bucket cannot be appended to:
    there the lines are kept and the whole object rewritten at `flush` (the loop flushes before
    each checkpoint save, so a resumed run finds every line up to its checkpoint) and at most
    every `flush_seconds` between. TensorBoard's event files for a bucket are written to a
    local folder and uploaded at the same moments, through `vit_jax.storage` (tensorboardX's own
    cloud writers keep uploading at exit, also after the writer was closed). A writer not
    `enabled` (processes other than the first) writes nothing.
    """

    def __init__(self, path: epath.Path, tensorboard: epath.Path | None, *,
                 enabled: bool = True, flush_seconds: float = 60.0):
        self.path = path
        self.tensorboard = tensorboard
        self._enabled = enabled
        self._remote = storage.is_remote(path)
        self._lines: list[str] = []
        self._flush_seconds = flush_seconds
        self._flushed = time.monotonic()
        self._tb = None
        self._tb_local: tempfile.TemporaryDirectory | None = None
        if tensorboard is None or not enabled:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return
        if storage.is_remote(tensorboard):
            self._tb_local = tempfile.TemporaryDirectory(prefix='vit_jax-tensorboard-')
        self._tb = SummaryWriter(self._tb_local.name if self._tb_local else
                                 os.fspath(tensorboard))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        line = json.dumps({'step': step, **scalars})
        if self._remote:
            self._lines.append(line)
            if time.monotonic() - self._flushed > self._flush_seconds:
                self.flush()
        else:
            with self.path.open('a') as f:
                f.write(line + '\n')
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def truncate(self, step: int) -> None:
        """Drops the records after `step` (a resumed run takes those steps again), and a torn
        last line (a write cut short by a kill or a full disk)."""
        if not self._enabled or not self.path.exists():
            return
        kept = [json.dumps(r) for r in parse_metrics(self.path.read_text()) if r['step'] <= step]
        if self._remote:
            self._lines = kept
        storage.write_atomic(self.path, ''.join(f'{line}\n' for line in kept))

    def flush(self) -> None:
        """Writes the lines and TensorBoard events kept for an object store (nothing to do on
        local disk)."""
        if self._enabled and self._remote:
            storage.write_atomic(self.path, ''.join(f'{line}\n' for line in self._lines))
            self._flushed = time.monotonic()
        if self._tb_local is not None:
            for name in os.listdir(self._tb_local.name):
                with open(os.path.join(self._tb_local.name, name), 'rb') as f:
                    storage.write_atomic(self.tensorboard / name, f.read())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        self.flush()
        if self._tb_local is not None:
            self._tb_local.cleanup()


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`'s `text`, in order; a last line cut short (no newline,
    not JSON: a write interrupted by a kill or a full disk) is left out. Any other line that is
    not a record (a JSON object with an integer `step`) is a `ValueError` naming its number."""
    lines = text.split('\n')
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the torn tail
                break
            raise ValueError(f'line {number} is not JSON') from None
        if not isinstance(record, dict) or type(record.get('step')) is not int:
            raise ValueError(f'line {number} is no record (a JSON object with an integer "step")')
        records.append(record)
    return records


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
