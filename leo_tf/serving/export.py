"""Export a training run's checkpoint as the next SavedModel version that TF Serving loads.

One path for every problem: the run's config.json says which problem it is;
that problem's serving module (serving.classification, serving.regression)
builds the signatures around the learner's own adaptation; export_model writes
the SavedModel, its assets.extra/leo_config.json (configuration and source
checkpoint; TF Serving ignores it) and assets.extra/tf_serving_warmup_requests
(PredictionLog records TF Serving replays before serving), and publishes the
folder atomically (serving.publish):

  <export_dir>/<version>/saved_model.pb, variables/    the SavedModel
  <export_dir>/<version>/assets.extra/leo_config.json
  <export_dir>/<version>/assets.extra/tf_serving_warmup_requests

The functions are plain graphs: no XLA, which TF Serving builds may lack.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import tensorflow as tf

import leo_tf
from leo_tf.classification import experiment as classification_experiment
from leo_tf.outer import checkpoints
from leo_tf.outer import lock
from leo_tf.regression import experiment as regression_experiment
from leo_tf.serving import classification
from leo_tf.serving import publish
from leo_tf.serving import regression
from leo_tf.serving import savedmodel


class _Problem:
  """How one problem's runs are read and served."""

  def __init__(self, run_config_class, serving, run_folder: str, build_learner):
    self.run_config_class = run_config_class  # its RunConfig: from_dict(config.json)
    self.serving = serving  # its serving module: servable(model, run_config)
    self.run_folder = run_folder  # where the served learner's best/ is, under checkpoint_path
    self.build_learner = build_learner  # run_config -> the learner to serve


PROBLEMS = {
    classification_experiment.PROBLEM: _Problem(
        classification_experiment.RunConfig, classification, "",
        classification_experiment.build_learner),
    regression_experiment.PROBLEM: _Problem(
        regression_experiment.RegressionRunConfig, regression, "leo",
        lambda config: regression_experiment.build_learner("leo", config)),
}


def export_model(model, run_config, export_dir: str, source: dict[str, Any], *,
                 warmup: bool = True, **servable_options) -> str:
  """Writes `model` as the next version under `export_dir`; returns the version folder.

  Args:
    model: the learner to export (its variables as they are now).
    run_config: the run's configuration (its problem picks the signatures;
      recorded in leo_config.json).
    export_dir: the model base path (created if missing).
    source: where the variables came from (checkpoint prefix, sha256, step, ...),
      recorded in leo_config.json.
    warmup: write TF Serving's warmup records (needs tensorflow-serving-api).
    **servable_options: passed to the problem's servable (regression: num_samples).

  Raises:
    FileExistsError: another process published the same version meanwhile.
  """
  problem = PROBLEMS[run_config.to_dict()["problem"]]
  module, signatures, fields, logs = problem.serving.servable(model, run_config,
                                                              **servable_options)

  def write_version(folder: str, version: int) -> None:
    tf.saved_model.save(module, folder, signatures=signatures)
    extra = os.path.join(folder, publish.EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    if warmup:
      savedmodel.write_warmup(os.path.join(extra, publish.WARMUP_FILE), logs)
    record = {
        **fields, "version": version, "source": source, "run_config": run_config.to_dict(),
        "leo_tf_version": leo_tf.__version__, "tensorflow_version": tf.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }
    with open(os.path.join(extra, publish.CONFIG_FILE), "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
      f.write("\n")

  return publish.publish(export_dir, write_version)


def read_run_config(checkpoint_path: str):
  """The run configuration in checkpoint_path/config.json (classification or regression)."""
  config_file = os.path.join(checkpoint_path, checkpoints.CONFIG_FILE)
  if not os.path.isfile(config_file):
    raise FileNotFoundError(
        f"No {config_file}: --checkpoint_path must be the folder of a training run "
        "(python -m leo_tf.train writes config.json there).")
  with open(config_file) as f:
    config_dict = json.load(f)
  problem = config_dict.get("problem", classification_experiment.PROBLEM)
  if problem not in PROBLEMS:
    raise ValueError(f"{config_file} names problem {problem!r}; leo_tf exports "
                     f"{sorted(PROBLEMS)}.")
  return PROBLEMS[problem].run_config_class.from_dict(config_dict)


def export_checkpoint(checkpoint_path: str, export_dir: str, checkpoint: str | None = None, *,
                      allow_duplicate: bool = False, warmup: bool = True,
                      **servable_options) -> str:
  """Exports a training run's best (or named) checkpoint as the next version.

  A regression run exports its LEO (checkpoint_path/leo).

  Args:
    checkpoint_path: the training run's folder (holds config.json and best/).
    export_dir: the model base path TF Serving watches (e.g. /models/leo).
    checkpoint: a checkpoint prefix to export instead of the best one (e.g.
      runs/leo/ckpt/ckpt-3000).
    allow_duplicate: write a new version even if one already holds this
      checkpoint (e.g. after a change to the export code).
    warmup: write TF Serving's warmup records.
    **servable_options: passed to the problem's servable; classification:
      front_end (serving.images.FrontEnd: stage 1's backbone, for the image
      signatures) and full_outputs (see serving.classification.ServingModule).

  Returns:
    The version folder written, <export_dir>/<version>.

  Raises:
    FileNotFoundError: no config.json, no best checkpoint, or no checkpoint at
      the given prefix.
    FileExistsError: a version in export_dir already holds this checkpoint.
    ValueError: the checkpoint does not hold this configuration's model.
    lock.RunFolderInUse: another process trains in checkpoint_path.
  """
  with lock.RunLock(checkpoint_path, f"export to {export_dir}", create=False):  # no training
    return _export_checkpoint(checkpoint_path, export_dir, checkpoint, allow_duplicate, warmup,
                              servable_options)


def _export_checkpoint(checkpoint_path: str, export_dir: str, checkpoint: str | None,
                       allow_duplicate: bool, warmup: bool, servable_options) -> str:
  """export_checkpoint() once the run folder is locked."""
  run_config = read_run_config(checkpoint_path)
  problem = PROBLEMS[run_config.to_dict()["problem"]]
  run_folder = os.path.join(checkpoint_path, problem.run_folder)
  if checkpoint is None:
    prefix, record = checkpoints.best_checkpoint(run_folder)
  else:
    prefix, record = checkpoint, {"step": checkpoints.checkpoint_step(checkpoint)}
  sha256 = publish.checkpoint_sha256(prefix)
  if not allow_duplicate:
    publish.check_not_published(export_dir, sha256, prefix)
  model = problem.build_learner(run_config)
  checkpoints.read_model(model, prefix, os.path.join(checkpoint_path, checkpoints.CONFIG_FILE))
  score = f"metavalid_{model.score.name}"
  source = {"checkpoint_path": os.path.abspath(checkpoint_path),
            "checkpoint": os.path.abspath(prefix), "sha256": sha256, "step": record.get("step"),
            score: record.get(score)}
  return export_model(model, run_config, export_dir, source, warmup=warmup, **servable_options)
