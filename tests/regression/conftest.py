"""Fixtures of the regression tests: the task distribution, a small LEO, task batches."""

import dataclasses

import pytest

from leo_tf.regression import leo
from leo_tf.regression import tasks as tasks_lib


@pytest.fixture(scope="session")
def tasks_config():
  """Appendix A's sines and lines."""
  return tasks_lib.SinusoidConfig()


@pytest.fixture(scope="session")
def small_config():
  """A small regression LEO: f_theta 1 -> 5 -> 4 -> 1, n_z = 3, two latent steps."""
  return leo.RegressionConfig(hidden_units=(5, 4), num_latents=3, network_units=6,
                              inner_unroll_length=2, inner_lr_init=0.1)


@pytest.fixture(scope="session")
def make_tasks(tasks_config):
  """make_tasks(batch_size, num_val, seed) -> RegressionTasks of meta-training batch 0."""

  def make(batch_size=3, num_val=7, seed=0, config=tasks_config):
    tasks, _ = tasks_lib.sample_tasks(tasks_lib.task_rng(seed, "train", 0), batch_size,
                                      dataclasses.replace(config, num_val_examples=num_val))
    return tasks

  return make
