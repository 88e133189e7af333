"""Tests for leo_tf.outer.progress: summaries, the progress clock, and what commands print."""

import math
import os
import time

import pytest
import tensorflow as tf
from absl import flags

from leo_tf.outer import progress


def test_summaries_accept_values_beyond_float32(tmp_path):
  # A diverged MAML's validation MSE (1e300) once stopped training with a ValueError;
  # the classification and regression runs share this writer (outer.progress).
  writer = tf.summary.create_file_writer(str(tmp_path))
  progress.write_summaries(writer, 1, {"mse": 1e300, "ok": 2.5})
  writer.flush()
  values = {}
  for name in os.listdir(tmp_path):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(tmp_path, name)):
      for v in event.summary.value:
        values[v.tag] = float(tf.make_ndarray(v.tensor))
  assert values == {"mse": math.inf, "ok": 2.5}


def test_progress_clock_restarts_after_the_compiling_step(capsys):
  bar = progress.Progress(total_steps=100, start_step=0, tasks_per_step=10, enabled=True)
  bar.t0 -= 50.0  # a first step that took 50 s to compile
  bar.restart_clock(1)
  assert bar.start == 1 and time.time() - bar.t0 < 1.0
  bar.t0 -= 9.0  # then 9 steps in 9 s: 1 step/s, 10 tasks/s
  bar.update(10, "loss 1.0")
  line = capsys.readouterr().err
  rate = float(line.split(" tasks/s")[0].split()[-1])
  eta = float(line.split("ETA")[1].split("s")[0])
  assert rate == pytest.approx(10.0, rel=0.05)  # not 100 tasks / 59 s
  assert eta == pytest.approx(90.0, rel=0.05)  # 90 steps left at 1 step/s


def _flag_values():
  values = flags.FlagValues()
  flags.DEFINE_float("outer_lr", 1e-4, "Adam's learning rate.", flag_values=values)
  flags.DEFINE_integer("regression_num_samples", 1, "S.", flag_values=values)
  return values


def test_command_error_prints_the_message_alone_with_the_flag_as_typed(capsys):
  with pytest.raises(SystemExit) as exit_info:
    progress.command_error("leo_tf.train", "outer_lr must be > 0, got -0.001.",
                           flag_values=_flag_values())
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert lines == ["leo_tf.train: error: --outer_lr must be > 0, got -0.001.",
                   "Run `python -m leo_tf.train --helpfull` for every flag and what it means."]
  with pytest.raises(SystemExit):
    progress.command_error("leo_tf.train", "num_samples must be >= 1, got 0.",
                           {"num_samples": "regression_num_samples"}, _flag_values())
  assert capsys.readouterr().err.splitlines()[0] == (
      "leo_tf.train: error: --regression_num_samples must be >= 1, got 0.")
  with pytest.raises(SystemExit):  # not a flag: the message as it is
    progress.command_error("leo_tf.train", "class 'x' has 3 images.", flag_values=_flag_values())
  assert capsys.readouterr().err.splitlines()[0] == "leo_tf.train: error: class 'x' has 3 images."


def test_a_typo_in_a_flagfile_names_the_file_and_line(tmp_path, capsys):
  flagfile = tmp_path / "demo.flags"
  flagfile.write_text("# a comment\n--outer_lr=1e-3\n--outer_rl=2\n")
  parse = progress.flags_parser("leo_tf.train", _flag_values())
  with pytest.raises(SystemExit) as exit_info:
    parse(["leo_tf.train", f"--flagfile={flagfile}"])
  assert exit_info.value.code == 2
  first = capsys.readouterr().err.splitlines()[0]
  assert first.startswith("leo_tf.train: error: Unknown command line flag 'outer_rl'")
  assert first.endswith(f"({flagfile}, line 3)")
  values = _flag_values()
  assert progress.flags_parser("x", values)(["x", "--outer_lr=0.5"]) == ["x"]
  assert values.outer_lr == 0.5


def test_positional_arguments_are_refused_with_what_was_meant(capsys):
  with pytest.raises(SystemExit) as exit_info:
    progress.start_command(["leo_tf.train", "demo.flags"], "leo_tf.train")
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines()[0] == (
      "leo_tf.train: error: unexpected arguments ['demo.flags']: flags look like --name=value "
      "(did you mean --flagfile=demo.flags?).")
