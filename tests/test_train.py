"""End to end: meta-training on a tiny synthetic set, resume, evaluation, bad input."""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.outer import step as outer
from leo_tf.data import synthetic
from leo_tf.classification import experiment as trainer
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig

D = 32
SYNTH = synthetic.SyntheticConfig(num_train_classes=12, num_val_classes=6, num_test_classes=6,
                                  images_per_class=30, embedding_dim=D, signal_dim=8,
                                  nuisance_dim=8, seed=1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("embeddings"))
  info = synthetic.generate(SYNTH, path, num_eval_tasks=200)
  return path, info


def _config(data, checkpoint_path, **outer_overrides):
  path, _ = data
  outer_config = dict(metatrain_batch_size=6, num_steps_limit=40, checkpoint_steps=20,
                      num_metavalid_tasks=40, num_metatest_tasks=120, outer_lr=3e-3,
                      checkpoint_path=str(checkpoint_path), seed=3)
  outer_config.update(outer_overrides)
  return trainer.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=8, inner_unroll_length=2,
                        finetuning_unroll_length=2, dropout_rate=0.1, kl_weight=0.01),
      data=DataConfig(data_path=path, dataset_name="synthetic", num_classes=5,
                      num_tr_examples_per_class=1, num_val_examples_per_class=5),
      outer=OuterConfig(**outer_config), summary_steps=5, progress=False)


def _latest_weights(checkpoint_path):
  reader = tf.train.load_checkpoint(os.path.join(checkpoint_path, "ckpt"))
  names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
  assert len(names) >= 7
  return {n: reader.get_tensor(n) for n in names}


def _summary_tags(folder):
  tags = set()
  for event_file in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_training_learns_writes_checkpoints_summaries_and_results(data_path, tmp_path):
  config = _config(data_path, tmp_path / "run", num_steps_limit=150, checkpoint_steps=50,
                   outer_lr=5e-3)
  results = trainer.train(config)
  ncm_1shot = data_path[1]["ncm"]["5way_1shot"]["accuracy"]
  # Chance is 20%; the nearest class mean on the raw features is the bar to clear.
  assert results["mean_accuracy"] > max(0.5, ncm_1shot + 0.05), (results, ncm_1shot)
  assert results["num_tasks"] == 120
  # Checkpoints, the best checkpoint, summaries and results are where they are said to be.
  assert tf.train.latest_checkpoint(os.path.join(tmp_path, "run", "ckpt")).endswith("ckpt-150")
  best_prefix, record = trainer.best_checkpoint(str(tmp_path / "run"))
  assert os.path.exists(best_prefix + ".index") and record["step"] in (50, 100, 150)
  train_tags = _summary_tags(tmp_path / "run" / "train")
  for tag in ("loss", "accuracy", "kl", "encoder_penalty", "l2", "orthogonality",
              "gradient_norm", "fallback", "inner_lr_mean", "finetuning_lr_mean", "inner_lr",
              "finetuning_lr", "val_loss"):
    assert tag in train_tags, (tag, train_tags)
  assert {"accuracy", "accuracy_ci95"} <= _summary_tags(tmp_path / "run" / "valid")
  with open(results["results_file"]) as f:
    written = json.load(f)
  assert written["mean_accuracy"] == pytest.approx(results["mean_accuracy"])
  # Recompute the per-task accuracies from the best checkpoint independently: the
  # reported mean is theirs, and the interval is 1.96 sd / sqrt(n) around it.
  model = trainer.LEO(config.model, seed=0)
  tf.train.Checkpoint(model=model).restore(best_prefix).expect_partial()
  test_split = trainer.embeddings.load_split(config.data, "test", D)
  sampler = trainer._eval_sampler(config, test_split, "test")
  # The straightforward path (gathered features through model(problem)), not the
  # trainer's fast one: they agree up to a query whose two best logits tie within
  # rounding.
  accuracies = trainer.evaluate_tasks(outer.make_eval_step(model, jit_compile=True), sampler,
                                      120, chunk_size=7)
  assert accuracies.shape == (120,)
  one_query = 1.0 / (120 * 5 * 29)
  assert written["mean_accuracy"] == pytest.approx(accuracies.mean(), abs=one_query + 1e-7)
  expected_ci = 1.96 * accuracies.std(ddof=1) / np.sqrt(120)
  assert written["ci95"] == pytest.approx(expected_ci, rel=1e-2)
  assert written["mean_accuracy"] - written["ci95"] <= accuracies.mean() <= (
      written["mean_accuracy"] + written["ci95"])
  # --evaluation_mode's path gives the same numbers from the best checkpoint.
  again = trainer.evaluate(config)
  assert again["mean_accuracy"] == pytest.approx(results["mean_accuracy"])


def test_confidence_interval_by_hand():
  mean, ci, sd = trainer.confidence_interval(np.array([0.2, 0.4, 0.6, 0.8]))
  assert mean == pytest.approx(0.5)
  assert sd == pytest.approx(np.sqrt(((0.3 ** 2 + 0.1 ** 2) * 2) / 3))
  assert ci == pytest.approx(1.96 * sd / 2)
  with pytest.raises(ValueError, match="num_tasks"):
    trainer.confidence_interval(np.array([]))


def test_interrupted_and_resumed_run_ends_with_the_same_weights(data_path, tmp_path,
                                                                monkeypatch):
  straight = _config(data_path, tmp_path / "straight", num_steps_limit=30, checkpoint_steps=10)
  trainer.train(straight)
  interrupted = _config(data_path, tmp_path / "resumed", num_steps_limit=30, checkpoint_steps=10)
  calls = {"n": 0}
  real_make = outer.make_train_step

  def crashing_make(*args, **kwargs):
    step = real_make(*args, **kwargs)

    def wrapped(*a, **k):
      calls["n"] += 1
      if calls["n"] == 15:  # mid-way between checkpoints 10 and 20
        raise KeyboardInterrupt("simulated interruption")
      return step(*a, **k)
    return wrapped

  monkeypatch.setattr(outer, "make_train_step", crashing_make)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(interrupted)
  monkeypatch.setattr(outer, "make_train_step", real_make)
  assert tf.train.latest_checkpoint(str(tmp_path / "resumed" / "ckpt")).endswith("ckpt-10")
  trainer.train(interrupted)  # same flags: continues from step 10
  a, b = _latest_weights(str(tmp_path / "straight")), _latest_weights(str(tmp_path / "resumed"))
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _train_command(data, checkpoint_path, steps):
  path, _ = data
  return [sys.executable, "-m", "leo_tf.train", f"--data_path={path}",
          "--dataset_name=synthetic", f"--embedding_dim={D}", "--num_latents=8",
          "--inner_unroll_length=2", "--finetuning_unroll_length=2",
          "--num_val_examples_per_class=5", "--metatrain_batch_size=6",
          f"--num_steps_limit={steps}", "--checkpoint_steps=5", "--num_metavalid_tasks=20",
          "--num_metatest_tasks=20", f"--checkpoint_path={checkpoint_path}", "--seed=5",
          "--progress=false", "--summary_steps=1"]


def test_kill_9_then_restart_matches_an_uninterrupted_run(data_path, tmp_path):
  steps = 400
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_command(data_path, killed, steps), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and not glob.glob(str(killed / "ckpt" / "ckpt-10.index")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # kill -9, mid-run
  proc.wait(timeout=30)
  assert glob.glob(str(killed / "ckpt" / "ckpt-*.index")), "no checkpoint before the kill"
  latest = tf.train.latest_checkpoint(str(killed / "ckpt"))
  assert latest is not None and not latest.endswith(f"ckpt-{steps}"), latest
  subprocess.run(_train_command(data_path, killed, steps), cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=600)
  straight = tmp_path / "straight"
  subprocess.run(_train_command(data_path, straight, steps), cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=600)
  a, b = _latest_weights(str(straight)), _latest_weights(str(killed))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_best_checkpoint_survives_a_crash_while_writing(data_path, tmp_path, monkeypatch):
  config = _config(data_path, tmp_path / "run")
  run = trainer.Run(config)
  run.step.assign(5)
  run.save_best(0.5)
  good_prefix, record = trainer.best_checkpoint(str(tmp_path / "run"))
  assert record == {"checkpoint": "ckpt-5", "step": 5, "metavalid_accuracy": 0.5}
  weights_at_5 = run.model.encoder.kernel.numpy().copy()
  run.model.encoder.kernel.assign(weights_at_5 + 1.0)
  run.step.assign(9)

  real_write = tf.train.Checkpoint.write

  def crash_after_partial_write(self, file_prefix, options=None):
    real_write(self, file_prefix, options)
    with open(file_prefix + ".index", "wb") as f:
      f.write(b"half")  # a torn file, then the process dies
    raise SystemExit("crash while writing the best checkpoint")

  monkeypatch.setattr(tf.train.Checkpoint, "write", crash_after_partial_write)
  with pytest.raises(SystemExit):
    run.save_best(0.9)
  monkeypatch.undo()
  prefix, record = trainer.best_checkpoint(str(tmp_path / "run"))
  assert prefix == good_prefix and record["step"] == 5  # still the complete one
  restored = trainer.LEO(config.model)
  tf.train.Checkpoint(model=restored).restore(prefix).expect_partial()
  np.testing.assert_array_equal(restored.encoder.kernel.numpy(), weights_at_5)


def test_evaluation_without_a_checkpoint_is_a_clear_error(data_path, tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    trainer.evaluate(_config(data_path, tmp_path / "empty"))


def test_resuming_with_other_settings_is_refused(data_path, tmp_path):
  config = _config(data_path, tmp_path / "run", num_steps_limit=0)
  trainer.train(config)
  other = dataclasses.replace(config, outer=dataclasses.replace(config.outer, outer_lr=1.0))
  with pytest.raises(ValueError, match="outer_lr"):
    trainer.train(other)


def test_a_config_json_that_predates_a_setting_resumes_with_its_default(data_path, tmp_path):
  config = _config(data_path, tmp_path / "run", num_steps_limit=0)
  trainer.train(config)
  path = tmp_path / "run" / "config.json"
  saved = json.loads(path.read_text())
  del saved["model"]["max_weights_stddev"]  # as written before that setting existed
  path.write_text(json.dumps(saved))
  trainer.train(config)  # same settings: accepted
  bounded = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                  max_weights_stddev=10.0))
  with pytest.raises(ValueError, match=r"max_weights_stddev: 0.0 -> 10.0"):
    trainer.train(bounded)


def test_nan_steps_are_reported_and_the_weight_stddev_bound_prevents_them(data_path, tmp_path,
                                                                          capsys):
  # A huge latent rate makes the unbounded exp(u) overflow in the inner loop.
  results = {}
  for bound in (0.0, 10.0):
    config = _config(data_path, tmp_path / f"run{bound}", num_steps_limit=10,
                     checkpoint_steps=10, num_metatest_tasks=20)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, inner_lr_init=1e4, max_weights_stddev=bound))
    results[bound] = trainer.train(config)
    results[bound]["stdout"] = capsys.readouterr().out
  assert results[0.0]["nan_fallbacks"] > 0
  assert "NaN or Inf loss" in results[0.0]["stdout"]
  assert "--max_weights_stddev" in results[0.0]["stdout"]
  assert results[10.0]["nan_fallbacks"] == 0
  assert "NaN" not in results[10.0]["stdout"]


def _run_cli(args, timeout=120):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "leo_tf.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_flags_and_contradictory_settings_fail_at_start(data_path, tmp_path):
  path, _ = data_path
  result = _run_cli(["--no_such_flag=3"])
  assert result.returncode != 0 and "no_such_flag" in result.stderr
  # K + V = 1 + 40 is more than the 30 images of each synthetic class.
  result = _run_cli([f"--data_path={path}", "--dataset_name=synthetic", f"--embedding_dim={D}",
                     "--num_val_examples_per_class=40", f"--checkpoint_path={tmp_path}/x"])
  assert result.returncode != 0
  assert "30 images" in result.stderr or "images" in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  result = _run_cli([f"--data_path={tmp_path}/nowhere", "--dataset_name=miniImageNet",
                     f"--checkpoint_path={tmp_path}/y"])
  assert result.returncode != 0 and "embeddings.zip" in result.stderr, result.stderr
  result = _run_cli(["--kl_weight=-1", f"--checkpoint_path={tmp_path}/z"])
  assert result.returncode != 0 and "kl_weight" in result.stderr


def test_early_stopping_after_patience_evaluations_without_improvement(data_path, tmp_path):
  # outer_lr tiny: meta-validation accuracy cannot improve on the first evaluation, so
  # with patience 2 training stops at the third evaluation (step 15 of 100).
  config = _config(data_path, tmp_path / "run", num_steps_limit=100, checkpoint_steps=5,
                   outer_lr=1e-12, early_stopping_patience=2)
  results = trainer.train(config)
  assert results["stopped_early"]
  assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith("ckpt-15")
  _, record = trainer.best_checkpoint(str(tmp_path / "run"))
  assert record["step"] == 5
