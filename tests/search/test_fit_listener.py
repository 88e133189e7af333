"""The hook the search uses in leo_tf.outer.fit: validation_listener sees every
meta-validation, and an exception it raises stops training with the checkpoints written."""

import json

import pytest
import tensorflow as tf

from leo_tf.core.config import OuterConfig
from leo_tf.outer import checkpoints
from leo_tf.outer import fit as fit_lib
from leo_tf.outer import step as outer_step
from leo_tf.regression import maml
from leo_tf.regression import tasks as tasks_lib
from tests.outer import test_fit as fit_tests


class _Stop(Exception):
  pass


def _maml_run(path, num_steps):
  """A tiny MAML run (the cheapest learner) that validates every 2 steps."""
  outer = OuterConfig(metatrain_batch_size=3, num_steps_limit=num_steps, checkpoint_steps=2,
                      outer_lr=1e-3, jit_compile=False, checkpoint_path=str(path), seed=0)
  run = checkpoints.RunState(str(path), lambda: maml.MAML(
      maml.MAMLConfig(hidden_units=(4,), num_inner_steps=1)), outer)
  step = outer_step.make_train_step(run.model, run.optimizer, outer)
  task_config = tasks_lib.SinusoidConfig()
  batches = lambda start: (tasks_lib.sample_tasks(tasks_lib.task_rng(0, "train", s), 3,
                                                  task_config)[0]
                           for s in range(start, num_steps))
  return run, step, batches, outer


def test_the_listener_sees_each_validation_and_stops_training_by_raising(tmp_path):
  run, step, batches, outer = _maml_run(tmp_path, num_steps=12)
  seen = []

  def listener(at_step, score):
    # By now the best and the latest checkpoints of this step are on disk.
    seen.append((at_step, score, tf.train.latest_checkpoint(str(tmp_path / "ckpt"))))
    if at_step == 4:
      raise _Stop()

  with fit_lib.validation_listener(listener), pytest.raises(_Stop):
    fit_lib.fit(run, step, batches, fit_tests._scripted([2.0, 1.5, 1.8]), outer, fit_tests.SPEC)
  assert [(s, v) for s, v, _ in seen] == [(2, 2.0), (4, 1.5)]
  assert [c.rsplit("-", 1)[1] for _, _, c in seen] == ["2", "4"]
  with open(tmp_path / "best" / "best.json") as f:
    assert json.load(f)["step"] == 4
  # Closed, the listener is gone; the same run resumes where it stopped.
  run, step, batches, outer = _maml_run(tmp_path, num_steps=6)
  report = fit_lib.fit(run, step, batches, fit_tests._scripted([0.9]), outer, fit_tests.SPEC)
  assert report.resumed and (report.final_step, report.steps_run) == (6, 2)
  assert len(seen) == 2
