"""leo_tf.classification.experiment, the trainer: meta-training on a tiny synthetic set,
checkpoints, summaries and results, evaluation, resume, NaN reporting, early stopping,
and the baselines (Meta-SGD, the nearest class mean) through --model."""

import dataclasses
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.classification import evaluation
from leo_tf.classification import experiment as trainer
from leo_tf.classification import prototypes
from leo_tf.classification.leo import LEO
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.data import embeddings
from leo_tf.data import episodes
from leo_tf.data import synthetic
from leo_tf.outer import checkpoints
from leo_tf.outer import step as outer

D = 32
SYNTH = synthetic.SyntheticConfig(num_train_classes=12, num_val_classes=6, num_test_classes=6,
                                  images_per_class=30, embedding_dim=D, signal_dim=8,
                                  nuisance_dim=8, seed=1)
# The baselines' smaller set.
BASELINE_D = 16
BASELINE_SYNTH = synthetic.SyntheticConfig(
    num_train_classes=10, num_val_classes=6, num_test_classes=6, images_per_class=12,
    embedding_dim=BASELINE_D, signal_dim=6, nuisance_dim=2, nuisance_scale=0.5, seed=2)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("embeddings"))
  info = synthetic.generate(SYNTH, path, num_eval_tasks=200)
  return path, info


@pytest.fixture(scope="module")
def baseline_data_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("baseline_embeddings"))
  synthetic.generate(BASELINE_SYNTH, path, num_eval_tasks=20)
  return path


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
  best_prefix, record = checkpoints.best_checkpoint(str(tmp_path / "run"))
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
  model = LEO(config.model, seed=0)
  tf.train.Checkpoint(model=model).restore(best_prefix).expect_partial()
  test_split = embeddings.load_split(config.data, "test", D)
  sampler = evaluation.eval_sampler(config.data, test_split, "test", config.outer.seed)
  # The straightforward path (gathered features through model(problem)), not the
  # trainer's fast one: they agree up to a query whose two best logits tie within
  # rounding.
  accuracies = evaluation.evaluate_tasks(evaluation.make_eval_step(model, jit_compile=True),
                                         sampler, 120, chunk_size=7)
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
  # What "num_val_examples_per_class": 29 means is written beside it.
  assert written["num_val_examples_per_class"] == 29
  assert written["queries"].startswith("every remaining image of each class: 29 per class")
  # An evaluation of another size gets its own file; the 120-task results stay.
  smaller = trainer.evaluate(dataclasses.replace(
      config, outer=dataclasses.replace(config.outer, num_metatest_tasks=30)))
  assert smaller["results_file"] == os.path.join(tmp_path, "run", "results_test_30tasks.json")
  with open(results["results_file"]) as f:
    assert json.load(f)["num_tasks"] == 120
  elsewhere = trainer.evaluate(dataclasses.replace(config, results_dir=str(tmp_path / "out")))
  assert elsewhere["results_file"] == os.path.join(tmp_path, "out", "results_test.json")
  assert elsewhere["mean_accuracy"] == results["mean_accuracy"]


def test_a_corrupt_test_split_is_found_before_training(data_path, tmp_path):
  path, _ = data_path
  copy = tmp_path / "data"
  shutil.copytree(path, copy)
  test_file = copy / "synthetic" / "center" / "test_embeddings.pkl"
  test_file.write_bytes(test_file.read_bytes()[:1000])  # truncated
  config = _config((str(copy), None), tmp_path / "run")
  with pytest.raises(embeddings.EmbeddingsError, match="test_embeddings.pkl"):
    trainer.train(config)
  assert not os.path.exists(tmp_path / "run")  # nothing trained, nothing written


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


def test_resuming_with_other_settings_is_refused(data_path, tmp_path):
  config = _config(data_path, tmp_path / "run", num_steps_limit=0)
  trainer.train(config)
  other = dataclasses.replace(config, outer=dataclasses.replace(config.outer, outer_lr=1.0))
  with pytest.raises(ValueError, match="outer_lr"):
    trainer.train(other)


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


def test_early_stopping_after_patience_evaluations_without_improvement(data_path, tmp_path):
  # outer_lr tiny: meta-validation accuracy cannot improve on the first evaluation, so
  # with patience 2 training stops at the third evaluation (step 15 of 100).
  config = _config(data_path, tmp_path / "run", num_steps_limit=100, checkpoint_steps=5,
                   outer_lr=1e-12, early_stopping_patience=2)
  results = trainer.train(config)
  assert results["stopped_early"]
  assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith("ckpt-15")
  _, record = checkpoints.best_checkpoint(str(tmp_path / "run"))
  assert record["step"] == 5


# ----------------------------------------------------------------------------
# The baselines through the trainer (--model).
# ----------------------------------------------------------------------------


def _baseline_config(path, checkpoint_path, model_name):
  return trainer.RunConfig(
      model=ModelConfig(embedding_dim=BASELINE_D, num_latents=4, inner_unroll_length=1,
                        finetuning_unroll_length=1, finetuning_lr_init=2.0, dropout_rate=0.0),
      data=DataConfig(data_path=path, dataset_name="synthetic", num_classes=5,
                      num_tr_examples_per_class=1, num_val_examples_per_class=3),
      outer=OuterConfig(metatrain_batch_size=4, num_steps_limit=20, checkpoint_steps=10,
                        num_metavalid_tasks=20, num_metatest_tasks=50, outer_lr=1e-2,
                        checkpoint_path=str(checkpoint_path), seed=1, jit_compile=False),
      summary_steps=10, progress=False, model_name=model_name)


def test_trainer_prototypes_evaluates_the_nearest_class_mean_without_training(
    baseline_data_path, tmp_path):
  config = _baseline_config(baseline_data_path, tmp_path / "proto", "prototypes")
  results = trainer.train(config)
  # The same tasks, by the NumPy rule: the same mean accuracy.
  split = embeddings.load_split(config.data, "test", BASELINE_D)
  v = episodes.num_eval_val_examples(split, 1)
  sampler = episodes.EpisodeSampler(split, 5, 1, v, seed=1, stream="test")
  expected = prototypes.ncm_accuracy(sampler.sample_tasks(0, 50))
  assert results["model_name"] == "prototypes" and results["num_tasks"] == 50
  np.testing.assert_allclose(results["mean_accuracy"], expected.mean(), rtol=1e-6)
  assert os.path.isfile(tmp_path / "proto" / "results_val.json")
  assert not os.path.exists(tmp_path / "proto" / "ckpt")


def test_trainer_metasgd_trains_checkpoints_and_evaluates(baseline_data_path, tmp_path):
  config = _baseline_config(baseline_data_path, tmp_path / "msgd", "metasgd")
  results = trainer.train(config)
  assert results["model_name"] == "metasgd" and results["checkpoint_step"] in (10, 20)
  assert results["mean_accuracy"] > 0.5  # chance is 0.2
  with open(tmp_path / "msgd" / "config.json") as f:
    assert json.load(f)["model_name"] == "metasgd"
  # The checkpoint holds Meta-SGD's variables, and a LEO run may not resume it.
  reader = tf.train.load_checkpoint(str(tmp_path / "msgd" / "ckpt"))
  names = reader.get_variable_to_shape_map()
  assert any(n.startswith("model/initial_weights") for n in names)
  with pytest.raises(ValueError, match="model_name: 'metasgd' -> 'leo'"):
    trainer.train(_baseline_config(baseline_data_path, tmp_path / "msgd", "leo"))
