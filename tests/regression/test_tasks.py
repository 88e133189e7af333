"""regression.tasks: the sines-and-lines sampler, the functions by hand, the streams, line fits."""

import math

import numpy as np
import pytest

from leo_tf.regression import tasks as tasks_lib


@pytest.fixture(scope="module")
def many_tasks(tasks_config):
  return tasks_lib.sample_tasks(tasks_lib.task_rng(7, "train", 0), 20_000, tasks_config)


def test_sampler_ranges_mix_and_noise(many_tasks):
  tasks, params = many_tasks
  n = params.is_sine.size
  # Half and half: 20,000 fair coin flips are within 3 sd (0.0106) of 0.5.
  assert abs(np.mean(params.is_sine) - 0.5) < 3 * 0.5 / math.sqrt(n)
  sine, line = params.is_sine, ~params.is_sine
  assert 0.1 <= params.amplitude[sine].min() and params.amplitude[sine].max() <= 5.0
  assert 0.0 <= params.phase[sine].min() and params.phase[sine].max() <= math.pi
  for values in (params.slope[line], params.intercept[line]):
    assert -3.0 <= values.min() and values.max() <= 3.0
    assert values.min() < -2.9 and values.max() > 2.9  # the whole range is used
  # Uniform on [0.1, 5]: mean 2.55, sd 4.9 / sqrt(12).
  assert abs(params.amplitude[sine].mean() - 2.55) < 3 * 4.9 / math.sqrt(12 * sine.sum())
  assert -5.0 <= tasks.tr_input.min() and tasks.tr_input.max() <= 5.0
  assert tasks.tr_input.shape == (n, 5, 1) and tasks.val_input.shape == (n, 20, 1)
  # Noise: the targets minus the noiseless function have sd 0.3 (sd of the
  # sample sd over 100,000 draws: 0.3 / sqrt(2 * 100,000) = 0.0007).
  noise = tasks.tr_output - tasks_lib.evaluate(params, tasks.tr_input)
  assert abs(noise.std() - 0.3) < 0.003 and abs(noise.mean()) < 0.005
  assert abs((tasks.val_output - tasks.val_target).std() - 0.3) < 0.003


def test_evaluate_by_hand():
  params = tasks_lib.TaskParams(is_sine=np.array([True, False]), amplitude=np.array([2.0, 0.0]),
                                phase=np.array([math.pi / 2, 0.0]), slope=np.array([0.0, 1.5]),
                                intercept=np.array([0.0, -1.0]))
  x = np.array([[math.pi / 2, math.pi], [2.0, -4.0]])  # [B=2, M=2]
  # 2 sin(pi/2 - pi/2) = 0, 2 sin(pi - pi/2) = 2; 1.5 * 2 - 1 = 2, 1.5 * -4 - 1 = -7.
  np.testing.assert_allclose(tasks_lib.evaluate(params, x), [[0.0, 2.0], [2.0, -7.0]], atol=1e-12)
  np.testing.assert_allclose(tasks_lib.evaluate(params, x[..., None])[..., 0],
                             [[0.0, 2.0], [2.0, -7.0]], atol=1e-12)


def test_sampler_is_seeded_and_streams_are_separate(make_tasks, tasks_config):
  a = make_tasks(4, seed=3)
  b = make_tasks(4, seed=3)
  c = make_tasks(4, seed=4)
  np.testing.assert_array_equal(a.tr_output, b.tr_output)
  assert not np.allclose(a.tr_input, c.tr_input)
  test, _ = tasks_lib.heldout_tasks(1, "test", 5, 11, tasks_config)
  val, _ = tasks_lib.heldout_tasks(1, "val", 5, 11, tasks_config)
  assert not np.allclose(test.tr_input, val.tr_input)
  np.testing.assert_allclose(test.val_input[2, :, 0], np.linspace(-5, 5, 11), atol=1e-6)


def test_sampler_rejects_bad_settings():
  with pytest.raises(ValueError, match="num_tr_examples"):
    tasks_lib.SinusoidConfig(num_tr_examples=0)
  with pytest.raises(ValueError, match="sine_fraction"):
    tasks_lib.SinusoidConfig(sine_fraction=1.5)
  with pytest.raises(ValueError, match="stream"):
    tasks_lib.task_rng(0, "training", 0)


def test_line_fit_rms():
  x = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])[..., None]
  exact = tasks_lib.RegressionTasks(x, 3 * x - 1, x, x, x)
  np.testing.assert_allclose(tasks_lib.line_fit_rms(exact), [0.0], atol=1e-12)
  # y = x^2 on -2..2: the best line is y = 2 (slope 0), residuals 2, -1, -2, -1, 2.
  bent = tasks_lib.RegressionTasks(x, x ** 2, x, x, x)
  np.testing.assert_allclose(tasks_lib.line_fit_rms(bent), [math.sqrt(14 / 5)], atol=1e-12)
