"""Sines and lines: the task sampler, f_theta, the regression LEO, MAML, training, export."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import distributions
from leo_tf.regression import maml as maml_lib
from leo_tf.regression import leo as regression
from leo_tf.regression import experiment as regression_trainer
from leo_tf.regression import tasks as sinusoid
from leo_tf.classification import experiment as trainer
from leo_tf.core.config import OuterConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = sinusoid.SinusoidConfig()
SMALL = regression.RegressionConfig(hidden_units=(5, 4), num_latents=3, network_units=6,
                                    inner_unroll_length=2, inner_lr_init=0.1)


def _tasks(batch_size=3, num_val=7, seed=0, config=TASKS):
  tasks, _ = sinusoid.sample_tasks(sinusoid.task_rng(seed, "train", 0), batch_size,
                                   dataclasses.replace(config, num_val_examples=num_val))
  return tasks


# ----------------------------------------------------------------------------
# The task distribution.


@pytest.fixture(scope="module")
def many_tasks():
  return sinusoid.sample_tasks(sinusoid.task_rng(7, "train", 0), 20_000, TASKS)


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
  noise = tasks.tr_output - sinusoid.evaluate(params, tasks.tr_input)
  assert abs(noise.std() - 0.3) < 0.003 and abs(noise.mean()) < 0.005
  assert abs((tasks.val_output - tasks.val_target).std() - 0.3) < 0.003


def test_evaluate_by_hand():
  params = sinusoid.TaskParams(is_sine=np.array([True, False]), amplitude=np.array([2.0, 0.0]),
                               phase=np.array([math.pi / 2, 0.0]), slope=np.array([0.0, 1.5]),
                               intercept=np.array([0.0, -1.0]))
  x = np.array([[math.pi / 2, math.pi], [2.0, -4.0]])  # [B=2, M=2]
  # 2 sin(pi/2 - pi/2) = 0, 2 sin(pi - pi/2) = 2; 1.5 * 2 - 1 = 2, 1.5 * -4 - 1 = -7.
  np.testing.assert_allclose(sinusoid.evaluate(params, x), [[0.0, 2.0], [2.0, -7.0]], atol=1e-12)
  np.testing.assert_allclose(sinusoid.evaluate(params, x[..., None])[..., 0],
                             [[0.0, 2.0], [2.0, -7.0]], atol=1e-12)


def test_sampler_is_seeded_and_streams_are_separate():
  a = _tasks(4, seed=3)
  b = _tasks(4, seed=3)
  c = _tasks(4, seed=4)
  np.testing.assert_array_equal(a.tr_output, b.tr_output)
  assert not np.allclose(a.tr_input, c.tr_input)
  test, _ = sinusoid.heldout_tasks(1, "test", 5, 11, TASKS)
  val, _ = sinusoid.heldout_tasks(1, "val", 5, 11, TASKS)
  assert not np.allclose(test.tr_input, val.tr_input)
  np.testing.assert_allclose(test.val_input[2, :, 0], np.linspace(-5, 5, 11), atol=1e-6)


def test_sampler_rejects_bad_settings():
  with pytest.raises(ValueError, match="num_tr_examples"):
    sinusoid.SinusoidConfig(num_tr_examples=0)
  with pytest.raises(ValueError, match="sine_fraction"):
    sinusoid.SinusoidConfig(sine_fraction=1.5)
  with pytest.raises(ValueError, match="stream"):
    sinusoid.task_rng(0, "training", 0)


def test_line_fit_rms():
  x = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])[..., None]
  exact = sinusoid.RegressionTasks(x, 3 * x - 1, x, x, x)
  np.testing.assert_allclose(sinusoid.line_fit_rms(exact), [0.0], atol=1e-12)
  # y = x^2 on -2..2: the best line is y = 2 (slope 0), residuals 2, -1, -2, -1, 2.
  bent = sinusoid.RegressionTasks(x, x ** 2, x, x, x)
  np.testing.assert_allclose(sinusoid.line_fit_rms(bent), [math.sqrt(14 / 5)], atol=1e-12)


# ----------------------------------------------------------------------------
# f_theta.


def test_generated_parameter_count():
  assert regression.num_params((40, 40)) == 1761  # 1*40+40 + 40*40+40 + 40*1+1
  assert [s for _, s in regression.param_shapes((40, 40))] == [
      (1, 40), (40,), (40, 40), (40,), (40, 1), (1,)]
  model = regression.LEORegression(regression.RegressionConfig())
  assert model.num_params == 1761
  assert model.decoder.kernels[-1].shape == (32, 2 * 1761)  # mean and scale per parameter
  assert [tuple(k.shape) for k in model.encoder.kernels] == [(2, 32), (32, 32), (32, 32)]
  assert [tuple(k.shape) for k in model.relation_network.kernels] == [(64, 32), (32, 32),
                                                                      (32, 32)]


def test_mlp_predict_matches_numpy():
  rng = np.random.default_rng(0)
  hidden = (3, 4)
  params = rng.standard_normal((2, 3, regression.num_params(hidden)))  # [B=2, S=3, P=27]
  x = rng.standard_normal((2, 3, 5, 1))  # [B, S, M=5, 1]
  got = regression.mlp_predict(tf.constant(params), tf.constant(x), hidden).numpy()
  want = np.zeros((2, 3, 5, 1))
  for b in range(2):
    for s in range(3):
      p = params[b, s]
      w0, b0 = p[:3].reshape(1, 3), p[3:6]
      w1, b1 = p[6:18].reshape(3, 4), p[18:22]
      w2, b2 = p[22:26].reshape(4, 1), p[26:27]
      h = np.maximum(x[b, s] @ w0 + b0, 0)
      h = np.maximum(h @ w1 + b1, 0)
      want[b, s] = h @ w2 + b2
  np.testing.assert_allclose(got, want, rtol=1e-12)
  with pytest.raises(ValueError, match="hidden_units"):
    regression.mlp_predict(tf.constant(params), tf.constant(x), (3, 5))


def test_bounded_gaussian():
  u = tf.constant([[-3.0, -0.5, 0.0, 0.5, 5.0, 50.0]], tf.float64)
  params = tf.concat([tf.zeros_like(u), u], axis=-1)
  bounded = regression.bounded_gaussian(params, 0.1, 1.0)
  plain = distributions.gaussian_from_params(params, 0.1)
  # Identical at and below u = 0 (u = 0 gives the offset, 0.1); below 1.0 always.
  np.testing.assert_allclose(bounded.scale.numpy()[0, :3], plain.scale.numpy()[0, :3])
  np.testing.assert_allclose(bounded.scale.numpy()[0, 2], 0.1)
  assert np.all(bounded.scale.numpy() < 1.0) and bounded.scale.numpy()[0, -1] > 0.999
  with pytest.raises(ValueError, match="max_stddev"):
    regression.bounded_gaussian(params, 0.5, 0.5)


# ----------------------------------------------------------------------------
# The regression LEO.


def test_leo_shapes_and_modes():
  model = regression.LEORegression(SMALL, seed=1)
  tasks = _tasks(3, num_val=7)
  seed = tf.constant([1, 2])
  out = model(tasks, training=True, seed=seed, num_samples=4)
  p = regression.num_params(SMALL.hidden_units)
  assert out.val_predictions.shape == (3, 4, 7, 1)
  assert out.params.shape == (3, 4, p) and out.latents.shape == (3, 4, 3)
  assert out.val_loss.shape == out.kl.shape == out.encoder_penalty.shape == (3,)
  assert np.all(out.kl.numpy() != 0) and np.all(np.isfinite(out.val_loss.numpy()))
  # The query loss is the MSE of the sampled predictions against the noisy targets.
  want = np.mean((out.val_predictions.numpy() - tasks.val_output[:, None]) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(out.val_loss.numpy(), want, rtol=1e-5)
  evaluation = model(tasks, training=False, seed=seed, num_samples=4)
  np.testing.assert_array_equal(evaluation.kl.numpy(), 0.0)  # no KL in evaluation
  # Samples differ from each other; the means path is one deterministic function.
  assert np.std(evaluation.val_predictions.numpy(), axis=1).mean() > 0
  means = model(tasks, training=False, use_means=True)
  assert means.val_predictions.shape == (3, 1, 7, 1)
  graph = tf.function(lambda t: model(t, training=False, use_means=True).val_predictions)
  np.testing.assert_allclose(graph(tasks).numpy(), means.val_predictions.numpy(), rtol=1e-5,
                             atol=1e-6)


def test_leo_refuses_missing_mode_or_seed_and_bad_tasks():
  model = regression.LEORegression(SMALL)
  tasks = _tasks(2)
  with pytest.raises(ValueError, match="training=True or training=False"):
    model(tasks, training=None, seed=tf.constant([0, 0]))
  with pytest.raises(ValueError, match="pass seed"):
    model(tasks, training=False)
  bad = tasks._replace(tr_output=tasks.tr_output[:, :3])
  with pytest.raises(ValueError, match="tr_output"):
    model(bad, training=False, use_means=True)
  with pytest.raises(ValueError, match="num_latents"):
    regression.RegressionConfig(num_latents=0)


def test_leo_meta_gradient_reaches_every_variable():
  model = regression.LEORegression(SMALL, seed=2)
  tasks = _tasks(2)
  with tf.GradientTape() as tape:
    loss = model.meta_loss(model(tasks, training=True, seed=tf.constant([3, 4])))
  grads = tape.gradient(loss.total, model.meta_variables)
  names = [v.name for v in model.meta_variables]
  for name, g in zip(names, grads):
    if "finetuning_lr" in name:
      assert g is None  # no fine-tuning steps in SMALL
    else:
      assert g is not None and np.all(np.isfinite(g.numpy())), name
      assert np.abs(g.numpy()).max() > 0, name


# ----------------------------------------------------------------------------
# MAML.


def _constant_maml(alpha, steps, first_order=False):
  """A MAML whose f is the constant b2 (every other parameter 0), b2 = 0 at first."""
  model = maml_lib.MAML(maml_lib.MAMLConfig(hidden_units=(2,), inner_lr=alpha,
                                            num_inner_steps=steps, dtype="float64"),
                        first_order=first_order)
  model.init_params.assign(tf.zeros_like(model.init_params))
  return model


def test_maml_inner_loop_by_hand():
  # f = b2 (the hidden units are 0 and ReLU's gradient at 0 is 0), so one step on the
  # support MSE is b2 <- b2 - alpha * 2 (b2 - mean y). alpha = 0.25, mean y = 4:
  # 0 -> 2 -> 3 (the gap to 4 halves at each step).
  x = np.array([[[-1.0], [0.0], [1.0], [2.0]]])
  y = np.array([[[3.0], [5.0], [4.0], [4.0]]])
  tasks = sinusoid.RegressionTasks(x, y, x, y + 1.0, y)
  for steps, want in ((1, 2.0), (2, 3.0)):
    out = _constant_maml(0.25, steps)(tasks, training=False)
    np.testing.assert_allclose(out.params.numpy()[0, 0, -1], want, rtol=1e-12)
    np.testing.assert_allclose(out.val_predictions.numpy()[0, 0, :, 0], want, rtol=1e-12)


def test_maml_meta_gradient_is_second_order():
  # Two steps: b2'' = b2 + 0.75 (mean y - b2), so d b2'' / d b2 = 0.25 through the
  # inner gradients (1 if they are stopped). Query MSE (b2'' - y_val)^2, y_val = y + 1 = 5
  # on average, at b2 = 0: b2'' = 3, dL/db2'' = 2 (3 - 5) = -4.
  x = np.array([[[-1.0], [0.0], [1.0], [2.0]]])
  y = np.array([[[3.0], [5.0], [4.0], [4.0]]])
  tasks = sinusoid.RegressionTasks(x, y, x, y + 1.0, y)
  for first_order, factor in ((False, 0.25), (True, 1.0)):
    model = _constant_maml(0.25, 2, first_order)
    with tf.GradientTape() as tape:
      loss = model.meta_loss(model(tasks, training=True))
    grad = tape.gradient(loss.total, model.init_params).numpy()
    np.testing.assert_allclose(grad[-1], -4.0 * factor, rtol=1e-12)


# ----------------------------------------------------------------------------
# Scores.


def test_scores_by_hand():
  # Two tasks, S = 3 samples at M = 2 points.
  samples = np.array([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]],
                      [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])[..., None]  # [2, 3, 2, 1]
  targets = np.array([[1.0, 1.0], [1.0, 3.0]])[..., None]  # [2, 2, 1]
  # Means: task 0 (2, 1), task 1 (1, 1). MSE: ((2-1)^2 + 0) / 2 = 0.5; (0 + 4) / 2 = 2.
  np.testing.assert_allclose(regression_trainer.mse_of_mean(samples, targets), [0.5, 2.0])
  # 90% bands: task 0 point 0 [0.2, 3.8] holds 1; point 1 [1, 1] holds 1; task 1: 1 yes, 3 no.
  np.testing.assert_allclose(regression_trainer.band_coverage(samples, targets), [1.0, 0.5])


# ----------------------------------------------------------------------------
# Training, evaluation, figure, export.


def _run_config(path, **overrides):
  outer = OuterConfig(metatrain_batch_size=8, num_steps_limit=40, outer_lr=3e-3,
                      gradient_threshold=0.0, gradient_norm_threshold=1.0,
                      checkpoint_path=str(path), checkpoint_steps=40, num_metavalid_tasks=20,
                      num_metatest_tasks=40, metavalid_batch_size=20, metatest_batch_size=40,
                      jit_compile=False)
  settings = dict(model=dataclasses.replace(SMALL, hidden_units=(10, 10), num_latents=4),
                  maml=maml_lib.MAMLConfig(hidden_units=(10, 10), num_inner_steps=2),
                  outer=outer, maml_num_steps_limit=40, maml_outer_lr=1e-2, num_eval_samples=10,
                  num_valid_samples=4, num_eval_points=15, summary_steps=20, progress=False)
  settings.update(overrides)
  return regression_trainer.RegressionRunConfig(**settings)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  path = tmp_path_factory.mktemp("sines")
  config = _run_config(path)
  results = regression_trainer.train(config)
  return config, results


def test_short_run_lowers_the_mse_and_writes_everything(trained_run):
  config, results = trained_run
  path = config.outer.checkpoint_path
  tasks, _ = sinusoid.heldout_tasks(config.eval_seed, "test", 40, 15, config.tasks)
  # What the initial models score on the same held-out tasks.
  for name in ("leo", "maml"):
    initial = regression_trainer.build_model(name, config)
    predict = regression_trainer.make_predict_step(initial, 10 if name == "leo" else 1, False)
    samples = regression_trainer.predict_tasks(predict, tasks, 40, config.eval_seed)
    initial_mse = regression_trainer.mse_of_mean(samples, tasks.val_target).mean()
    assert results[name]["mse"]["mean"] < 0.8 * initial_mse, (name, results[name], initial_mse)
  assert 0.0 <= results["leo"]["coverage90"]["mean"] <= 1.0
  assert results["leo"]["nonfinite_tasks"] == 0
  assert results["training"]["leo"]["steps_run"] == 40
  with open(os.path.join(path, "results_test.json")) as f:
    assert json.load(f)["leo_vs_maml"]["mse_ratio"] == results["leo_vs_maml"]["mse_ratio"]
  with open(os.path.join(path, "figure3.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert set(results["figure_tasks"]) == {"ambiguous", "sine", "line"}
  with open(os.path.join(path, "config.json")) as f:
    saved = json.load(f)
  assert saved["problem"] == "regression"
  assert regression_trainer.RegressionRunConfig.from_dict(saved) == config
  # A restart with other settings is refused; with the same, there is nothing left to do.
  other = dataclasses.replace(config, model=dataclasses.replace(config.model, kl_weight=0.5))
  with pytest.raises(ValueError, match="kl_weight"):
    regression_trainer.train(other)


def test_export_round_trip(trained_run, tmp_path):
  config, _ = trained_run
  from leo_tf.serving import export  # pylint: disable=g-import-not-at-top
  version_dir = export.export_checkpoint(config.outer.checkpoint_path, str(tmp_path / "models"))
  assert version_dir.endswith(os.path.join("models", "1"))
  loaded = tf.saved_model.load(version_dir)
  serve = loaded.signatures["serving_default"]
  support_x = np.array([[-4.0], [-1.0], [0.5], [2.0], [3.5]], np.float32)
  support_y = np.array([[1.0], [0.2], [-0.3], [2.0], [4.0]], np.float32)
  query_x = np.linspace(-5, 5, 9, dtype=np.float32)[:, None]
  out = serve(support_x=support_x, support_y=support_y, query_x=query_x)
  s = config.num_eval_samples
  assert out["mean"].shape == (9, 1) and out["samples"].shape == (s, 9, 1)
  np.testing.assert_allclose(out["mean"].numpy(), out["samples"].numpy().mean(axis=0),
                             rtol=1e-5, atol=1e-6)
  # The same numbers as the trained model in this process, with the export's seed.
  model, _, _ = regression_trainer.load_best("leo", config)
  tasks = sinusoid.RegressionTasks(support_x[None], support_y[None], query_x[None], None, None)
  want = model(tasks, training=False, seed=tf.constant([config.eval_seed, 0]),
               num_samples=s).val_predictions[0].numpy()
  np.testing.assert_allclose(out["samples"].numpy(), want, rtol=1e-4, atol=1e-4)
  with pytest.raises(tf.errors.InvalidArgumentError, match="support_y"):
    serve(support_x=support_x, support_y=support_y[:3], query_x=query_x)
  # TF Serving's path: a TF1 session over the SavedModel reads the same variables.
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
    signature = meta.signature_def["serving_default"]
    feed = {signature.inputs[k].name: v for k, v in
            (("support_x", support_x), ("support_y", support_y), ("query_x", query_x))}
    mean = sess.run(signature.outputs["mean"].name, feed)
  np.testing.assert_allclose(mean, out["mean"].numpy(), rtol=1e-5, atol=1e-6)
  with open(os.path.join(version_dir, "assets.extra", "leo_config.json")) as f:
    assert json.load(f)["run_config"]["problem"] == "regression"


def test_sines_flagfile_names_only_known_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from leo_tf import train  # pylint: disable=g-import-not-at-top,unused-import
  with open(os.path.join(REPO, "sines.flags")) as f:
    names = [line.strip()[2:].split("=", 1)[0] for line in f
             if line.strip() and not line.startswith("#")]
  assert "problem" in names
  for name in names:
    assert name in flags.FLAGS, f"sines.flags: unknown flag {name}"


def test_predictions_xla_equal_graph_for_a_seed():
  # The draws are made outside the XLA cluster, so both give the same samples.
  model = regression.LEORegression(dataclasses.replace(SMALL, inner_unroll_length=1), seed=5)
  tasks = _tasks(2, num_val=4)
  seed = tf.constant([9, 1])
  graph = regression_trainer.make_predict_step(model, 3, jit_compile=False)(tasks, seed)
  xla = regression_trainer.make_predict_step(model, 3, jit_compile=True)(tasks, seed)
  eager = model(tasks, training=False, seed=seed, num_samples=3).val_predictions
  np.testing.assert_allclose(xla.numpy(), graph.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(eager.numpy(), graph.numpy(), rtol=1e-4, atol=1e-5)


def test_summaries_accept_values_beyond_float32(tmp_path):
  # A diverged MAML's validation MSE (1e300) once stopped training with a ValueError;
  # the classification and regression trainers share this writer.
  writer = tf.summary.create_file_writer(str(tmp_path))
  trainer.write_summaries(writer, 1, {"mse": 1e300, "ok": 2.5})
  writer.flush()
  values = {}
  for name in os.listdir(tmp_path):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(tmp_path, name)):
      for v in event.summary.value:
        values[v.tag] = float(tf.make_ndarray(v.tensor))
  assert values == {"mse": math.inf, "ok": 2.5}
