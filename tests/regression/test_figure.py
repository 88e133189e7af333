"""Tests for leo_tf.regression.figure: which held-out tasks figure 3 draws, and the file."""

import numpy as np

from leo_tf.regression import figure
from leo_tf.regression import tasks as tasks_lib


def _tasks(support_y):
  """Tasks with support x = 0..4 and the given support targets [B, 5]; queries unused."""
  support_y = np.asarray(support_y, np.float32)[..., None]  # [B, 5, 1]
  b = support_y.shape[0]
  x = np.broadcast_to(np.arange(5, dtype=np.float32)[None, :, None], (b, 5, 1))
  grid = np.broadcast_to(np.linspace(-5, 5, 7, dtype=np.float32)[None, :, None], (b, 7, 1))
  return tasks_lib.RegressionTasks(tr_input=x, tr_output=support_y, val_input=grid,
                                   val_output=np.zeros_like(grid), val_target=np.zeros_like(grid))


def test_ambiguous_clear_and_line_tasks_are_picked_by_their_line_fit():
  tasks = _tasks([
      [0, 1, 2, 3, 4],  # 0: sine whose points lie on a line (rms 0): ambiguous
      [0, 3, 0, 3, 0],  # 1: sine far from any line (rms 1.44 > 4 x 0.3): clear
      [1, 1, 1, 1, 1],  # 2: a line task
      [0, 1.1, 2, 2.9, 4],  # 3: sine close to a line (rms 0.063): ambiguous, after 0
      [0, 1, 2, 3, 4],  # 4: a small sine on a line: not ambiguous (amplitude < 1.5)
      [0, -3, 0, -3, 0],  # 5: another clear sine
      [0, 3, 0, 3, 0],  # 6: a third clear sine: only the first two are drawn
  ])
  params = tasks_lib.TaskParams(
      is_sine=np.array([True, True, False, True, True, True, True]),
      amplitude=np.array([2.0, 3.0, 0.0, 2.0, 1.0, 3.0, 3.0]), phase=np.zeros(7),
      slope=np.zeros(7), intercept=np.zeros(7))
  # The rule's inputs: the line fits 0 and 4 exactly, 3 within the noise, 1 far outside it.
  rms = tasks_lib.line_fit_rms(tasks)
  assert rms[0] < 1e-6 and rms[3] < 0.3 and rms[1] > 1.2
  assert figure.pick_figure_tasks(tasks, params, noise_stddev=0.3) == {
      "ambiguous": [0, 3], "sine": [1, 5], "line": [2]}


def test_the_figure_is_a_png_written_atomically(tmp_path):
  tasks = _tasks([[0, 3, 0, 3, 0], [1, 1, 1, 1, 1]])
  params = tasks_lib.TaskParams(is_sine=np.array([True, False]), amplitude=np.array([3.0, 0.0]),
                                phase=np.zeros(2), slope=np.zeros(2), intercept=np.ones(2))
  samples = np.zeros((2, 4, 7, 1))  # [N, S, M, 1]
  path = tmp_path / "figure3.png"
  chosen = figure.draw_figure(str(path), tasks, params, {"leo": samples, "maml": samples[:, :1]},
                              tasks_lib.SinusoidConfig(), {"leo": 8000, "maml": 20000})
  assert chosen == {"ambiguous": [], "sine": [0], "line": [1]}
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in tmp_path.iterdir()] == ["figure3.png"]  # no temporary file left
