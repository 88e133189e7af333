"""leo_tf.outer.checkpoints: the best checkpoint survives a crash while writing, the
resume check of config.json, and evaluation without a checkpoint."""

import dataclasses
import glob
import errno
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.classification import experiment
from leo_tf.classification.leo import LEO
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.outer import checkpoints

D = 32


def _config(checkpoint_path, **outer_overrides):
  outer_config = dict(metatrain_batch_size=6, num_steps_limit=40, checkpoint_steps=20,
                      num_metavalid_tasks=40, num_metatest_tasks=120, outer_lr=3e-3,
                      checkpoint_path=str(checkpoint_path), seed=3)
  outer_config.update(outer_overrides)
  return experiment.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=8, inner_unroll_length=2,
                        finetuning_unroll_length=2, dropout_rate=0.1, kl_weight=0.01),
      data=DataConfig(data_path=str(checkpoint_path / "no_data"), dataset_name="synthetic",
                      num_classes=5, num_tr_examples_per_class=1, num_val_examples_per_class=5),
      outer=OuterConfig(**outer_config), summary_steps=5, progress=False)


def test_best_checkpoint_survives_a_crash_while_writing(tmp_path, monkeypatch):
  config = _config(tmp_path / "run")
  run = checkpoints.RunState(config.outer.checkpoint_path,
                             lambda: experiment.build_learner(config), config.outer)
  run.step.assign(5)
  run.save_best(0.5)
  good_prefix, record = checkpoints.best_checkpoint(str(tmp_path / "run"))
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
  prefix, record = checkpoints.best_checkpoint(str(tmp_path / "run"))
  assert prefix == good_prefix and record["step"] == 5  # still the complete one
  restored = LEO(config.model)
  tf.train.Checkpoint(model=restored).restore(prefix).expect_partial()
  np.testing.assert_array_equal(restored.encoder.kernel.numpy(), weights_at_5)


def test_evaluation_without_a_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    experiment.evaluate(_config(tmp_path / "empty"))


def test_check_resume_config_refuses_other_settings(tmp_path):
  # (Through experiment.train in tests/classification/test_experiment.py.)
  config = _config(tmp_path / "run", num_steps_limit=0)
  path = config.outer.checkpoint_path
  os.makedirs(path)
  checkpoints.check_resume_config(path, config)  # the first start writes config.json
  checkpoints.check_resume_config(path, config)  # same settings: accepted
  other = dataclasses.replace(config, outer=dataclasses.replace(config.outer, outer_lr=1.0))
  with pytest.raises(ValueError, match="outer_lr"):
    checkpoints.check_resume_config(path, other)


def test_a_config_json_that_predates_a_setting_resumes_with_its_default(tmp_path):
  config = _config(tmp_path / "run", num_steps_limit=0)
  os.makedirs(config.outer.checkpoint_path)
  checkpoints.check_resume_config(config.outer.checkpoint_path, config)
  path = tmp_path / "run" / checkpoints.CONFIG_FILE
  saved = json.loads(path.read_text())
  del saved["model"]["max_weights_stddev"]  # as written before that setting existed
  path.write_text(json.dumps(saved))
  checkpoints.check_resume_config(config.outer.checkpoint_path, config)  # same settings: accepted
  bounded = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                  max_weights_stddev=10.0))
  with pytest.raises(ValueError, match=r"max_weights_stddev: 0.0 -> 10.0"):
    checkpoints.check_resume_config(config.outer.checkpoint_path, bounded)


def test_an_evaluation_of_another_size_never_replaces_the_results_file(tmp_path):
  folder = str(tmp_path)
  first = checkpoints.results_path(folder, "test", 2000)
  assert first == os.path.join(folder, "results_test.json")
  checkpoints.write_results(first, {"num_tasks": 2000, "mean_accuracy": 0.9})
  assert checkpoints.results_path(folder, "test", 2000) == first  # the same evaluation again
  assert checkpoints.results_path(folder, "test", 500) == os.path.join(
      folder, "results_test_500tasks.json")
  assert checkpoints.results_path(folder, "val", 500) == os.path.join(folder, "results_val.json")


def test_results_that_cannot_be_written_say_where_to_write_them(tmp_path, monkeypatch):
  def read_only(path, data):
    raise OSError(errno.EROFS, "Read-only file system", path)

  monkeypatch.setattr(checkpoints.atomic, "write_json_atomically", read_only)
  with pytest.raises(OSError, match=r"could not write the results to .*results_test.json "
                                    r"\(Read-only file system\); nothing was lost: they are "
                                    r"printed above, .* Pass --results_dir="):
    checkpoints.write_results(str(tmp_path / "results_test.json"), {"num_tasks": 1})


def _tiny_run(path):
  outer = OuterConfig(outer_lr=1e-2, checkpoint_path=str(path))
  config = ModelConfig(embedding_dim=8, num_latents=2)
  return checkpoints.RunState(str(path), lambda: LEO(config), outer)


def _saved_at(run, *steps):
  for step in steps:
    run.step.assign(step)
    run.model.inner_lr.assign(tf.fill([2], float(step)))  # weights that say their step
    run.save_latest()


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_whole_one(tmp_path, capsys, damage):
  _saved_at(_tiny_run(tmp_path), 10, 20, 30)
  data = glob.glob(str(tmp_path / "ckpt" / "ckpt-30.data-*"))[0]
  size = os.path.getsize(data)
  with open(data, "r+b") as f:
    if damage == "truncated":  # a torn write, a disk that filled up
      f.truncate(size // 2)
    else:
      f.write(b"\0" * size)
  run = _tiny_run(tmp_path)
  assert run.restore_latest()
  assert int(run.step.numpy()) == 20
  np.testing.assert_array_equal(run.model.inner_lr.numpy(), [20.0, 20.0])
  warning = capsys.readouterr().err
  assert warning.startswith("Warning: ckpt/ckpt-30 (")
  assert warning.rstrip().endswith("could not be read back whole; resuming from ckpt/ckpt-20: "
                                   "steps 21 to 30 are trained again.")


def test_no_whole_checkpoint_and_a_damaged_best_are_clear_errors(tmp_path):
  run = _tiny_run(tmp_path)
  _saved_at(run, 10)
  run.save_best(0.5)
  for pattern in ("ckpt/ckpt-10.data-*", "best/ckpt-10.data-*"):
    with open(glob.glob(str(tmp_path / pattern))[0], "r+b") as f:
      f.truncate(8)
  with pytest.raises(ValueError, match=r"No checkpoint in .* reads back whole \(ckpt/ckpt-10 "
                                       r"\(IndexError\), best/ckpt-10 \(IndexError\)\)"):
    _tiny_run(tmp_path).restore_latest()
  with pytest.raises(ValueError, match=r"Checkpoint .*best/ckpt-10 could not be read .*its "
                                       r"files are damaged"):
    checkpoints.restore_best(LEO(ModelConfig(embedding_dim=8, num_latents=2)), str(tmp_path),
                             "config.json")


def test_a_first_best_checkpoint_before_any_latest_one_is_resumed_from(tmp_path, capsys):
  # The first meta-validation writes best/ before ckpt/ has any checkpoint, and Checkpoint.write
  # leaves out the save counter no save() has made yet; a kill -9 before ckpt/ckpt-5 is complete
  # must still resume from it (it was refused as damaged, seen in the search's kill test).
  run = _tiny_run(tmp_path)
  run.step.assign(5)
  run.model.inner_lr.assign(tf.fill([2], 5.0))
  run.save_best(0.5)
  assert not os.path.exists(tmp_path / "ckpt" / "checkpoint")
  run = _tiny_run(tmp_path)
  assert run.restore_latest()
  assert int(run.step.numpy()) == 5
  np.testing.assert_array_equal(run.model.inner_lr.numpy(), [5.0, 5.0])
  assert "Resuming from the best checkpoint best/ckpt-5 (step 5): " in capsys.readouterr().err
  run.save_latest()  # and training goes on, writing ckpt/ as usual
  assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-5")


def test_a_best_checkpoint_newer_than_the_latest_is_resumed_from(tmp_path, capsys):
  run = _tiny_run(tmp_path)
  _saved_at(run, 10)
  run.step.assign(20)
  run.model.inner_lr.assign(tf.fill([2], 20.0))
  run.save_best(0.5)  # then the process stopped before ckpt/ckpt-20 was written
  run = _tiny_run(tmp_path)
  assert run.restore_latest()
  assert int(run.step.numpy()) == 20
  np.testing.assert_array_equal(run.model.inner_lr.numpy(), [20.0, 20.0])
  assert ("Resuming from the best checkpoint best/ckpt-20 (step 20): " in
          capsys.readouterr().err)
  # The latest checkpoint of the best's step damaged: the best has the same state.
  _saved_at(run, 20)
  with open(glob.glob(str(tmp_path / "ckpt" / "ckpt-20.data-*"))[0], "r+b") as f:
    f.truncate(8)
  run = _tiny_run(tmp_path)
  assert run.restore_latest() and int(run.step.numpy()) == 20
  assert capsys.readouterr().err.rstrip().endswith(
      "resuming from best/ckpt-20: it holds the same step, so no step is trained again.")
