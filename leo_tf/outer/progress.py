"""What a person and TensorBoard see of a run: the progress line and the scalar summaries."""

from __future__ import annotations

import sys
import time
from typing import Mapping

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

  def restart_clock(self, step: int) -> None:
    """Rates and the ETA count from here: call after the first step, so compilation is left out."""
    self.start, self.t0 = step, time.time()

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


HELP_FLAGS = ("--help", "-help", "--helpshort", "--helpfull", "-?")


def _hint(command: str) -> str:
  return f"Run `python -m {command} --helpfull` for every flag and what it means."


def command_error(command: str, message: str, flag_names: Mapping[str, str] | None = None,
                  flag_values=None):
  """Exits with status 2 after printing `message` alone and a one-line hint (no usage text).

  A message that starts with a configuration field's name (e.g. "outer_lr must
  be > 0, got -0.001.") starts with the flag's name as typed instead
  ("--outer_lr must be > 0, ..."); `flag_names` maps the fields whose flag
  has another name (e.g. num_samples -> regression_num_samples). flag_values:
  the absl FlagValues the command parsed (default: absl's FLAGS).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  first = message.split(" ", 1)[0]
  flag = (flag_names or {}).get(first, first)
  if flag in flag_values:
    message = f"--{flag}{message[len(first):]}"
  sys.stderr.write(f"{command}: error: {message}\n{_hint(command)}\n")
  sys.exit(2)


def _where_in_flagfiles(flag: str, argv: list[str]) -> str:
  """' (demo.flags, line 7)' for the flagfile line that sets --flag, or ''."""
  for arg in argv:
    if not arg.startswith("--flagfile="):
      continue
    path = arg.split("=", 1)[1]
    try:
      with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
          if line.strip().split("=", 1)[0] in (f"--{flag}", f"-{flag}"):
            return f" ({path}, line {number})"
    except OSError:
      continue
  return ""


def flags_parser(command: str, flag_values=None):
  """An absl `flags_parser` for app.run: one message per bad flag, and --help exits with 0.

  absl prints the whole usage text for a bad flag; this prints its message,
  where a flagfile set it, and a one-line hint. --help and --helpfull print
  their text and exit with status 0 (absl's exit with 1). flag_values: the
  absl FlagValues to parse into (default: absl's FLAGS).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values

  def parse(argv: list[str]) -> list[str]:
    try:
      return flag_values(argv)
    except flags.Error as e:
      where = _where_in_flagfiles(getattr(e, "flagname", "") or "", argv)
      sys.stderr.write(f"{command}: error: {e}{where}\n{_hint(command)}\n")
      sys.exit(2)
    except SystemExit as e:
      if e.code == 1 and any(a.split("=", 1)[0] in HELP_FLAGS for a in argv[1:]):
        sys.exit(0)
      raise

  return parse


def start_command(argv: list[str], command: str) -> None:
  """What every command does first: refuse positional arguments, keep TensorFlow's INFO quiet.

  A positional argument (a bare `demo.flags`) exits with a message that says
  what was probably meant (command_error).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    extra = argv[1:]
    meant = [f"--flagfile={a}" if a.endswith(".flags") else f"--{a}" for a in extra]
    command_error(command, f"unexpected arguments {extra}: flags look like --name=value (did "
                           f"you mean {' '.join(meant)}?).")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep TensorFlow's INFO lines off the console
