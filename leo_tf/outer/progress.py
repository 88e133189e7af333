"""What a person and TensorBoard see of a run: the progress line and the scalar summaries."""

from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf


class Progress:
  """A one-line progress bar with tasks/s and ETA (plain lines when not a TTY)."""

  def __init__(self, total_steps: int, start_step: int, tasks_per_step: int, enabled: bool):
    self.total, self.start, self.tasks_per_step = total_steps, start_step, tasks_per_step
    self.enabled = enabled
    self.t0 = time.time()
    self.tty = sys.stderr.isatty()
    self._last_line = 0.0

  def update(self, step: int, text: str) -> None:
    if not self.enabled:
      return
    elapsed = max(time.time() - self.t0, 1e-9)
    done = step - self.start
    rate = done * self.tasks_per_step / elapsed
    steps_per_s = done / elapsed
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    width = 24
    filled = int(width * step / max(self.total, 1))
    line = (f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} "
            f"{rate:7.1f} tasks/s ETA {eta:6.0f}s {text}")
    if self.tty:
      sys.stderr.write("\r" + line)
      sys.stderr.flush()
    elif time.time() - self._last_line > 10 or step == self.total:
      self._last_line = time.time()
      print(line, file=sys.stderr, flush=True)

  def message(self, text: str) -> None:
    if self.enabled and self.tty:
      sys.stderr.write("\n")
    print(text, flush=True)


def write_summaries(writer, step: int, scalars: dict[str, float]) -> None:
  """Writes float32 scalars; values beyond float32's range (a diverging run) become +-Inf.

  (tf.summary.scalar refuses a Python float that does not fit in float32, which
  would stop training at the very step whose loss one wants to see.)
  """
  with writer.as_default(step=step), np.errstate(over="ignore"):
    for name, value in scalars.items():
      tf.summary.scalar(name, np.float32(value))


def start_command(argv: list[str]) -> None:
  """What every command does first: refuse positional arguments, keep TensorFlow's INFO quiet.

  Raises:
    absl.app.UsageError: an argument that is not a flag (a bare `demo.flags`).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags look like --name=value).")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep TensorFlow's INFO lines off the console
