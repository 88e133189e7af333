"""Tests for leo_tf.outer.fit, the one fit loop, with scripted meta-validation scores."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.classification.leo import LEO
from leo_tf.core.config import ModelConfig, OuterConfig
from leo_tf.data import random_problems
from leo_tf.outer import checkpoints
from leo_tf.outer import fit as fit_lib
from leo_tf.outer import step as outer_step
from leo_tf.regression import maml
from leo_tf.regression import tasks as tasks_lib

SPEC = fit_lib.FitSpec(intro="a test.", describe=lambda m: f"loss {m['loss']:.3f}",
                       nan_hint="nothing", summary_steps=2, progress=False)


def _scripted(means):
  """validate() returning 4 per-task scores with the given means, one call after another."""
  calls = iter(means)
  return lambda: fit_lib.Validation(np.full(4, next(calls)), {}, "")


def _leo_run(path, num_steps, patience):
  outer = OuterConfig(metatrain_batch_size=4, num_steps_limit=num_steps, checkpoint_steps=2,
                      early_stopping_patience=patience, outer_lr=1e-2, jit_compile=False,
                      checkpoint_path=str(path), seed=0)
  model_config = ModelConfig(embedding_dim=8, num_latents=2, inner_unroll_length=1,
                             finetuning_unroll_length=1)
  run = checkpoints.RunState(str(path), lambda: LEO(model_config), outer)
  step = outer_step.make_train_step(run.model, run.optimizer, outer)
  batches = lambda start: (random_problems.random_problem(4, 3, 1, 2, 8, seed=s)
                           for s in range(start, num_steps))
  return run, step, batches, outer


def test_fit_keeps_the_best_and_stops_after_patience_evaluations(tmp_path, capsys):
  run, step, batches, outer = _leo_run(tmp_path, num_steps=12, patience=2)
  # Evaluations at steps 2, 4, 6, 8: the best is step 4's; 6 and 8 do not improve.
  report = fit_lib.fit(run, step, batches, _scripted([0.5, 0.7, 0.6, 0.7]), outer, SPEC)
  assert (report.final_step, report.steps_run, report.stopped_early) == (8, 8, True)
  assert not report.resumed and report.nan_fallbacks == 0
  with open(tmp_path / "best" / "best.json") as f:
    assert json.load(f) == {"checkpoint": "ckpt-4", "step": 4, "metavalid_accuracy": 0.7}
  assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-8")
  assert report.weights_checksum == pytest.approx(fit_lib.weights_checksum(
      run.model.meta_variables))
  out = capsys.readouterr().out
  assert "step 4: meta-valid accuracy 70.00% +- 0.00% over 4 tasks (best so far)" in out
  assert "Early stopping at step 8: no better meta-validation accuracy in 2 evaluations." in out
  # Started again, it resumes at step 8 with the counters it had, and stops at the next
  # evaluation that does not improve.
  run, step, batches, outer = _leo_run(tmp_path, num_steps=12, patience=2)
  again = fit_lib.fit(run, step, batches, _scripted([0.65]), outer, SPEC)
  assert again.resumed and (again.final_step, again.steps_run) == (10, 2)
  assert again.stopped_early and float(run.best.numpy()) == 0.7


def test_fit_of_a_lower_is_better_learner_keeps_the_lowest(tmp_path):
  outer = OuterConfig(metatrain_batch_size=3, num_steps_limit=6, checkpoint_steps=2,
                      outer_lr=1e-3, jit_compile=False, checkpoint_path=str(tmp_path), seed=0)
  config = maml.MAMLConfig(hidden_units=(4,), num_inner_steps=1)
  run = checkpoints.RunState(str(tmp_path), lambda: maml.MAML(config), outer)
  step = outer_step.make_train_step(run.model, run.optimizer, outer)
  task_config = tasks_lib.SinusoidConfig()
  batches = lambda start: (tasks_lib.sample_tasks(tasks_lib.task_rng(0, "train", s), 3,
                                                  task_config)[0]
                           for s in range(start, 6))
  report = fit_lib.fit(run, step, batches, _scripted([2.0, 1.5, 1.8]), outer, SPEC)
  assert report.final_step == 6 and not report.stopped_early
  _, record = checkpoints.best_checkpoint(str(tmp_path))
  assert (record["step"], record["metavalid_mse"]) == (4, 1.5)


def test_fit_without_steps_validates_the_initial_learner(tmp_path):
  run, step, batches, outer = _leo_run(tmp_path, num_steps=0, patience=0)
  report = fit_lib.fit(run, step, batches, _scripted([0.4]), outer, SPEC)
  assert report.final_step == 0 and run.has_best
  assert os.path.isfile(tmp_path / "best" / "ckpt-0.index")
