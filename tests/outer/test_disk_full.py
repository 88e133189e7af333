"""A disk that fills up while a checkpoint, a results file or an export version is written.

The writer is made to fail part way, as a full disk fails it: TensorFlow's SaveV2
writes its shard into <prefix>_temp/, which is then torn and the op raises what
TensorFlow raises for ENOSPC (ResourceExhaustedError "No space left on device"), or
OSError(ENOSPC); Python's writers write half their bytes and raise OSError(ENOSPC).
Each time: nothing half-written is visible, the error names what failed and says that
nothing was lost, and the same command started again resumes with the state the stopped
run held (from which it ends with an uninterrupted run's weights, as after kill -9).
"""

import errno
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import io_ops

from leo_tf.classification.leo import LEO
from leo_tf.core.config import ModelConfig, OuterConfig
from leo_tf.data import atomic
from leo_tf.data import random_problems
from leo_tf.outer import checkpoints
from leo_tf.outer import fit as fit_lib
from leo_tf.outer import step as outer_step
from leo_tf.serving import publish

SPEC = fit_lib.FitSpec(intro="a test.", describe=lambda m: f"loss {m['loss']:.3f}",
                       nan_hint="nothing", summary_steps=2, progress=False)
NUM_STEPS = 6  # meta-validations (and checkpoints) at steps 2, 4, 6
SCORES = {2: 0.5, 4: 0.7, 6: 0.6}  # the best is step 4's
NO_SPACE = os.strerror(errno.ENOSPC)
OUTER = OuterConfig(metatrain_batch_size=4, num_steps_limit=NUM_STEPS, checkpoint_steps=2,
                    outer_lr=1e-2, jit_compile=False, seed=0)
MODEL = ModelConfig(embedding_dim=8, num_latents=2, inner_unroll_length=1,
                    finetuning_unroll_length=1)


def _run(path):
  return checkpoints.RunState(str(path), lambda: LEO(MODEL), OUTER)


def _fit(path, keep):
  """Fits a tiny LEO for NUM_STEPS steps in run folder `path` (its RunState put in `keep`)."""
  run = _run(path)
  keep.append(run)
  step = outer_step.make_train_step(run.model, run.optimizer, OUTER)
  batches = lambda start: (random_problems.random_problem(4, 3, 1, 2, 8, seed=s)
                           for s in range(start, NUM_STEPS))
  validate = lambda: fit_lib.Validation(np.full(4, SCORES[int(run.step.numpy())]), {}, "")
  return fit_lib.fit(run, step, batches, validate, OUTER, SPEC)


def _fill_disk_at(monkeypatch, prefix_end, error):
  """Makes SaveV2 of the checkpoint whose prefix ends with `prefix_end` fail part way."""
  real_save_v2 = io_ops.save_v2

  def save_v2(prefix, tensor_names, shape_and_slices, tensors, name=None):
    result = real_save_v2(prefix, tensor_names, shape_and_slices, tensors, name=name)
    shard = prefix.numpy().decode() if hasattr(prefix, "numpy") else str(prefix)
    if shard.split("_temp")[0].endswith(prefix_end):
      for path in glob.glob(shard + "*"):  # the shard's files, torn as a full disk tears them
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
      if error == "tensorflow":
        raise tf.errors.ResourceExhaustedError(None, None, f"{shard}; {NO_SPACE}")
      raise OSError(errno.ENOSPC, NO_SPACE, shard)
    return result

  monkeypatch.setattr(io_ops, "save_v2", save_v2)


def _partial_files(path):
  return [p for p in glob.glob(str(path / "**" / "*"), recursive=True)
          if "_temp" in p or p.endswith(".tmp")]


def _state(run):
  """Every variable of a run's checkpoint (learner, Adam, step, best, counter) as numpy."""
  variables = [*run.model.variables, *run.optimizer.variables, run.step, run.best,
               run.evals_without_improvement]
  return [v.numpy() for v in variables]


def test_a_full_disk_at_the_latest_checkpoint_loses_nothing(tmp_path, monkeypatch, capsys):
  # The run: at step 4 the best checkpoint (best/ckpt-4) is written, then the latest
  # (ckpt/ckpt-4) fails part way, as TensorFlow fails it on a full disk.
  _fill_disk_at(monkeypatch, os.path.join("ckpt", "ckpt-4"), "tensorflow")
  keep = []
  with pytest.raises(OSError) as failed:
    _fit(tmp_path, keep)
  run = keep[0]
  assert failed.value.errno == errno.ENOSPC
  assert str(failed.value) == (
      f"could not write the checkpoint {tmp_path}/ckpt/ckpt-4 "
      f"({NO_SPACE}); nothing was lost and no partial file is left. Free space (or fix the "
      "folder) and run the same command again: it resumes from step 4 (best/ckpt-4), to the "
      "weights of an uninterrupted run.")
  assert _partial_files(tmp_path) == []  # the ckpt-200_temp/ is gone
  assert not glob.glob(str(tmp_path / "ckpt" / "ckpt-4*"))
  assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-2")
  monkeypatch.undo()
  capsys.readouterr()
  stale = tmp_path / "best" / "ckpt-3_temp"  # what a write killed mid-way (kill -9) leaves
  stale.mkdir()
  # Started again, it resumes at step 4 (the rerun printed "Starting step 0" here)
  # with every variable as the stopped run held it, and removes the stale folder.
  again = _run(tmp_path)
  assert again.restore_latest()
  assert not stale.exists()
  assert "Resuming from the best checkpoint best/ckpt-4 (step 4)" in capsys.readouterr().err
  for ours, theirs in zip(_state(again), _state(run), strict=True):
    np.testing.assert_array_equal(ours, theirs)
  assert int(again.step.numpy()) == 4


@pytest.mark.parametrize("error", ["tensorflow", "oserror"])
@pytest.mark.parametrize("which", ["latest", "best"])
def test_a_checkpoint_that_fails_part_way_leaves_the_previous_one(tmp_path, monkeypatch, error,
                                                                  which):
  run = _run(tmp_path)
  run.step.assign(2)
  run.save_best(0.5)
  run.save_latest()
  run.step.assign(4)
  folder = {"latest": "ckpt", "best": "best"}[which]
  _fill_disk_at(monkeypatch, os.path.join(folder, "ckpt-4"), error)
  with pytest.raises(OSError, match=rf"could not write the checkpoint .*/{folder}/ckpt-4 "
                                    r"\(No space left on device\); nothing was lost .* it "
                                    r"resumes from step 2 \((ckpt|best)/ckpt-2\)"):
    run.save_latest() if which == "latest" else run.save_best(0.7)
  assert _partial_files(tmp_path) == []
  assert sorted(os.listdir(tmp_path / "best")) == [
      "best.json", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
  assert checkpoints.best_checkpoint(str(tmp_path))[1]["step"] == 2
  assert sorted(os.listdir(tmp_path / "ckpt")) == [
      "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
  monkeypatch.undo()
  assert run.save_latest().endswith("ckpt-4")  # space again: training goes on


class _DiskFillsUp:
  """A file whose write puts down half the bytes, then fails with ENOSPC."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data[:len(data) // 2])
    self._f.flush()
    raise OSError(errno.ENOSPC, NO_SPACE)

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def test_a_full_disk_while_writing_results_keeps_the_previous_file(tmp_path, monkeypatch):
  path = str(tmp_path / "results_test.json")
  checkpoints.write_results(path, {"num_tasks": 100, "mean_accuracy": 0.5})
  real_fdopen = os.fdopen
  monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: _DiskFillsUp(real_fdopen(*a, **k)))
  with pytest.raises(OSError) as failed:
    checkpoints.write_results(path, {"num_tasks": 100, "mean_accuracy": 0.9})
  assert str(failed.value) == (
      f"could not write the results to {path} ({NO_SPACE}); nothing was lost: they are printed "
      f"above, and {path} is as it was (no partial file is left). Pass --results_dir=<a "
      "writable folder> to keep them.")
  assert os.listdir(tmp_path) == ["results_test.json"]  # no .tmp file
  with open(path) as f:
    assert json.load(f) == {"num_tasks": 100, "mean_accuracy": 0.5}


@pytest.mark.parametrize("error", ["tensorflow", "oserror"])
def test_a_full_disk_while_publishing_a_version_publishes_nothing(tmp_path, error):
  export_dir = str(tmp_path / "models")

  def write_version(folder, version):
    os.makedirs(os.path.join(folder, "variables"))
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
      f.write(b"v%d" % version)
    with open(os.path.join(folder, "variables", "variables.index"), "wb") as f:
      f.write(b"half of it")
    if version == 2:  # the disk is full while the second version is written
      if error == "tensorflow":  # what tf.saved_model.save raises for ENOSPC
        raise tf.errors.ResourceExhaustedError(None, None, f"{folder}; {NO_SPACE}")
      raise OSError(errno.ENOSPC, NO_SPACE)

  first = publish.publish(export_dir, write_version)
  with pytest.raises(OSError) as failed:
    publish.publish(export_dir, write_version)
  assert failed.value.errno == errno.ENOSPC
  assert str(failed.value).startswith(
      f"could not write version 2 of {export_dir} ({NO_SPACE}); "
      "nothing was published and no partial folder is left")
  assert os.listdir(export_dir) == ["1"]  # no .tmp-2-<pid> folder
  with open(os.path.join(first, "saved_model.pb"), "rb") as f:
    assert f.read() == b"v1"
  # Space again: the next export writes version 2 whole.
  assert publish.publish(export_dir, lambda folder, version: os.makedirs(folder)).endswith("2")
