"""A run's state and its checkpoints: latest, best, and the resume check.

Layout of a run folder (one per trained learner; a regression run has one per
model, <checkpoint_path>/leo and <checkpoint_path>/maml):

  ckpt/                   tf.train.CheckpointManager: the latest checkpoints
  best/best.json          pointer to the best checkpoint (replaced atomically)
  best/ckpt-<step>.*      the best checkpoint's files
  train/, valid/          TensorBoard summaries (outer.fit)

and at the top of checkpoint_path, config.json: the run's configuration,
written once and checked on every restart (check_resume_config).

Everything a run needs to continue is in a checkpoint: the learner, Adam's
slots, the step, the best score so far and the early-stopping counter. The
random state is the step itself (episodes and draws are counter-based), so an
interrupted run (kill -9 included) restarted with the same flags ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
from typing import Any, Callable

import tensorflow as tf

from leo_tf.core.config import OuterConfig
from leo_tf.data import atomic
from leo_tf.outer import distribute
from leo_tf.outer import step as outer_step
from leo_tf.outer.learner import MetaLearner

BEST_POINTER = "best.json"
# What TensorFlow's checkpoint reader raises for damaged files: OpErrors (DataLossError,
# NotFoundError, ...) and, for a truncated data file, IndexError ("Read less bytes").
DAMAGED = (tf.errors.OpError, IndexError)
CONFIG_FILE = "config.json"
MISSING = object()  # a setting that a config.json predates (check_resume_config)


class RunState:
  """The learner, optimiser and counters of one training run, and their checkpoints."""

  def __init__(self, path: str, build_learner: Callable[[], MetaLearner], outer: OuterConfig,
               strategy: tf.distribute.Strategy | None = None, max_to_keep: int = 3):
    """Builds the learner and optimiser (under `strategy`'s scope when given).

    Only the chief writes into `path`; other workers of a multi-worker run take
    part in every save (as tf.distribute requires) but write into a scratch
    folder of their own, removed as they go (remove_scratch).

    Args:
      path: the run folder (ckpt/, best/, train/, valid/ go under it).
      build_learner: makes the fresh learner (called once, under the scope).
      outer: the outer loop's settings (Adam's learning rate).
      strategy: tf.distribute strategy (default: the default strategy).
      max_to_keep: latest checkpoints kept in ckpt/.
    """
    self.strategy = strategy or tf.distribute.get_strategy()
    self.chief = distribute.is_chief(self.strategy)
    self.root = path
    self.path = path
    if not self.chief:
      resolver = self.strategy.cluster_resolver
      self.path = os.path.join(path, f".scratch-{resolver.task_type}-{resolver.task_id}")
    with self.strategy.scope():
      self.model = build_learner()
      self.optimizer = outer_step.make_optimizer(self.model, outer)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
      self.best = tf.Variable(self.model.score.worst, dtype=tf.float64, trainable=False,
                              name="best")
      self.evals_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False,
                                                   name="evals_without_improvement")
    # "best_accuracy" or "best_mse": the names the checkpoints have always had.
    self._state = {"model": self.model, "optimizer": self.optimizer, "step": self.step,
                   "evals_without_improvement": self.evals_without_improvement,
                   f"best_{self.model.score.name}": self.best}
    self.checkpoint = tf.train.Checkpoint(**self._state)
    self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(self.path, "ckpt"),
                                              max_to_keep=max_to_keep)

  @property
  def has_best(self) -> bool:
    return os.path.isfile(os.path.join(self.path, "best", BEST_POINTER))

  def restore_latest(self) -> bool:
    """Restores the newest checkpoint of the run (the chief's) that reads back whole.

    The candidates are the latest checkpoints in ckpt/ and the best one in
    best/ (it holds the whole state at its step), newest step first. A newer
    one that does not read back (a torn write, a truncated or zeroed file, a
    disk that filled up) is skipped with a warning naming the steps that will
    be trained again; the manager keeps max_to_keep checkpoints, one every
    checkpoint_steps, so at most that many steps are lost.

    Returns:
      Whether a checkpoint was restored (False: none yet, start at step 0).

    Raises:
      ValueError: there are checkpoints, and none of them reads back whole.
    """
    folder = os.path.join(self.root, "ckpt")
    if self.chief:  # what a write killed mid-way left (kill -9, a crash): never a checkpoint
      for stale in glob.glob(os.path.join(glob.escape(self.root), "*", "ckpt-*_temp")):
        _remove(stale)
    candidates = resume_candidates(self.root)
    if not candidates:
      return False
    unreadable = []
    for step, prefix in candidates:
      try:
        # best/'s checkpoints are written with Checkpoint.write, which leaves out the save
        # counter unless an earlier save() made one (the first best comes before the first
        # ckpt/ save); restore() makes one and then finds it unmatched, so such a
        # checkpoint is read (Checkpoint.read: no counter) into the same objects.
        names = {name for name, _ in tf.train.list_variables(prefix)}
        if "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in names:
          self.checkpoint.restore(prefix).assert_existing_objects_matched()
        else:
          tf.train.Checkpoint(**self._state).read(prefix).assert_existing_objects_matched()
      except (*DAMAGED, ValueError, AssertionError) as e:
        unreadable.append(f"{_run_relative(self.root, prefix)} ({type(e).__name__})")
        continue
      name = _run_relative(self.root, prefix)
      if unreadable:
        newest = candidates[0][0]
        again = (f"steps {step + 1} to {newest} are trained again" if step < newest else
                 "it holds the same step, so no step is trained again")
        print(f"Warning: {', '.join(unreadable)} in {self.root} could not be read back whole; "
              f"resuming from {name}: {again}.", file=sys.stderr, flush=True)
      elif os.path.dirname(prefix) != folder:  # the best checkpoint, newer than ckpt/'s
        print(f"Resuming from the best checkpoint {name} (step {step}): {folder} has no "
              "checkpoint of that step (its write did not finish).", file=sys.stderr,
              flush=True)
      return True
    raise ValueError(
        f"No checkpoint in {self.root} reads back whole ({', '.join(unreadable)}); the files "
        "are damaged. Move ckpt/ and best/ away to train from step 0, or restore them from a "
        "copy.")

  def remove_scratch(self) -> None:
    """Deletes a non-chief worker's scratch folder."""
    if not self.chief and os.path.isdir(self.path):
      shutil.rmtree(self.path, ignore_errors=True)

  def save_latest(self) -> str:
    """Writes the latest checkpoint (ckpt/ckpt-<step>); see _write for a failed write."""
    step = int(self.step.numpy())
    return self._write(os.path.join(self.path, "ckpt", f"ckpt-{step}"),
                       lambda: self.manager.save(checkpoint_number=step))

  def save_best(self, score: float) -> str:
    """Writes the best checkpoint, then points best/best.json at it atomically.

    The checkpoint's files get a new prefix; only when they are complete is the
    pointer replaced (os.replace), so a crash leaves the previous best intact
    and pointed to. Older best checkpoints are removed afterwards.
    """
    best_dir = os.path.join(self.path, "best")
    os.makedirs(best_dir, exist_ok=True)
    step = int(self.step.numpy())
    prefix = os.path.join(best_dir, f"ckpt-{step}")

    def write() -> str:
      written = self.checkpoint.write(prefix)
      atomic.write_json_atomically(os.path.join(best_dir, BEST_POINTER), {
          "checkpoint": os.path.basename(written), "step": step,
          f"metavalid_{self.model.score.name}": score})
      return written

    prefix = self._write(prefix, write)
    keep = os.path.basename(prefix)
    for name in os.listdir(best_dir):
      if name.startswith("ckpt-") and not name.startswith(keep + "."):
        _remove(os.path.join(best_dir, name))
    return prefix

  def _write(self, prefix: str, write: Callable[[], str]) -> str:
    """Runs write() (which writes checkpoint `prefix`); a failed write leaves no partial file.

    Raises:
      OSError: the write failed on the file system (a full disk, a quota, a
        read-only folder: an OSError, or TensorFlow's error for one); its
        message names the checkpoint, the cause, and the step the same
        command resumes from. The partial files are removed first.
    """
    try:
      return write()
    except Exception as e:  # pylint: disable=broad-except
      failure = atomic.write_failure(e)
      if failure is None:
        raise
      pointed = None
      try:
        pointed, _ = best_checkpoint(self.path)
      except (OSError, ValueError, KeyError, TypeError):
        pass
      if prefix != pointed:  # never the files a pointer names
        _remove(prefix + "_temp")
        for path in glob.glob(glob.escape(prefix) + ".*"):
          _remove(path)
      resume = [c for c in resume_candidates(self.root) if c[1] != prefix]
      where = (f"from step {resume[0][0]} ({_run_relative(self.root, resume[0][1])})"
               if resume else "from step 0 (no checkpoint was written before)")
      raise atomic.refused_write_error(
          failure[0],
          f"could not write the checkpoint {prefix} ({failure[1]}); nothing "
          f"was lost and no partial file is left. Free space (or fix the folder) and run the "
          f"same command again: it resumes {where}, to the weights of an uninterrupted "
          "run.") from e

def _remove(path: str) -> None:
  """Removes a file or a folder (missing is fine)."""
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


def _run_relative(root: str, prefix: str) -> str:
  """ckpt/ckpt-30 or best/ckpt-20: a checkpoint's prefix inside its run folder."""
  return os.path.relpath(prefix, root)


def best_checkpoint(path: str) -> tuple[str, dict[str, Any]]:
  """The best checkpoint's prefix and its record in run folder `path`; a clear error if none."""
  pointer = os.path.join(path, "best", BEST_POINTER)
  if not os.path.isfile(pointer):
    raise FileNotFoundError(
        f"No best checkpoint in {path!r} ({pointer} is missing). Train first "
        "(python -m leo_tf.train with the same flags, evaluation_mode=False), or point "
        "--checkpoint_path at a finished training run.")
  with open(pointer) as f:
    record = json.load(f)
  return os.path.join(path, "best", record["checkpoint"]), record


def checkpoint_step_of_name(prefix: str) -> int | None:
  """N of a CheckpointManager prefix .../ckpt-N (None for another name)."""
  found = re.search(r"ckpt-([0-9]+)$", prefix)
  return int(found.group(1)) if found else None


def checkpoint_step(prefix: str) -> int | None:
  """The training step stored in a RunState checkpoint, if it has one."""
  try:
    return int(tf.train.load_variable(prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))
  except (tf.errors.NotFoundError, ValueError):
    return None


def read_model(model: MetaLearner, prefix: str, described_by: str) -> None:
  """Reads the learner's variables from a checkpoint (the rest of the run's state is ignored).

  Raises:
    ValueError: the checkpoint lacks one of the learner's variables or holds it
      in another shape, naming the variables and the run (`described_by`).
  """
  try:
    tf.train.Checkpoint(model=model).read(prefix).expect_partial(
        ).assert_existing_objects_matched()
  except DAMAGED as e:  # TensorFlow's reader: a truncated, zeroed or torn file
    raise ValueError(
        f"Checkpoint {prefix} could not be read ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200]}): its files are damaged. Train again to rewrite it, "
        "or use another checkpoint (python -m leo_tf.export --checkpoint=<prefix>).") from None
  except (AssertionError, ValueError) as e:  # a variable missing, or of another shape
    missing = re.findall(r"path=([^,\s]+)", str(e))  # the message prints their values too
    detail = f"not in the checkpoint: {', '.join(missing)}" if missing else str(e)[:500]
    raise ValueError(
        f"Checkpoint {prefix} does not hold the model that {described_by} describes; use it "
        f"with its own run folder ({detail}).") from None


def resume_candidates(path: str) -> list[tuple[int, str]]:
  """(step, prefix) of run folder `path`'s latest checkpoints and its best one, newest first:
  what Run.restore_latest tries, in its order."""
  candidates = []
  state = tf.train.get_checkpoint_state(os.path.join(path, "ckpt"))
  if state is not None and state.model_checkpoint_path:
    for prefix in state.all_model_checkpoint_paths or [state.model_checkpoint_path]:
      candidates.append((checkpoint_step_of_name(prefix) or 0, prefix))
  try:
    prefix, record = best_checkpoint(path)
    candidates.append((int(record["step"]), prefix))
  except (OSError, ValueError, KeyError, TypeError):
    pass  # no best checkpoint (or an unreadable pointer): ckpt/ alone
  # Newest step first; of one step, ckpt/'s before best/'s (sort is stable).
  return sorted(candidates, key=lambda c: -c[0])


def restore_best(model: MetaLearner, path: str, described_by: str
                 ) -> tuple[str | None, dict[str, Any]]:
  """Reads run `path`'s best checkpoint into `model`; returns its prefix and record.

  A learner without variables (the nearest class mean) has nothing to restore:
  (None, a record of Nones).
  """
  if not model.meta_variables:
    return None, {"step": None, f"metavalid_{model.score.name}": None}
  prefix, record = best_checkpoint(path)
  read_model(model, prefix, described_by)
  return prefix, record


def results_path(folder: str, split: str, num_tasks: int) -> str:
  """Where an evaluation of `num_tasks` tasks on `split` writes its results.

  <folder>/results_<split>.json, unless that file holds an evaluation of
  another number of tasks (say the run's 10,000-task meta-test, and now a
  quick 500-task one): then <folder>/results_<split>_<num_tasks>tasks.json, so
  no evaluation replaces one of another size.
  """
  path = os.path.join(folder, f"results_{split}.json")
  try:
    with open(path) as f:
      held = json.load(f).get("num_tasks")
  except (OSError, ValueError, AttributeError):
    return path  # none yet (or unreadable: it is replaced)
  if held in (None, num_tasks):
    return path
  return os.path.join(folder, f"results_{split}_{num_tasks}tasks.json")


def write_results(path: str, results: dict[str, Any]) -> None:
  """Writes a results file atomically; a clear error if the folder is not writable."""
  try:
    atomic.write_json_atomically(path, results)
  except OSError as e:  # atomic_write removed its temporary file: `path` is untouched
    raise OSError(f"could not write the results to {path} ({e.strerror or e}); nothing was "
                  f"lost: they are printed above, and {path} is as it was (no partial file is "
                  "left). Pass --results_dir=<a writable folder> to keep them.") from e


def check_resume_config(checkpoint_path: str, config) -> None:
  """Writes config.json on the first start; on a restart, refuses changed settings.

  `config` is a run configuration with to_dict() (holding "problem") and
  RESUME_FIELDS: {group: [field names]} ("" for top-level fields), the
  settings that, changed between a run and its resumption, make the
  checkpoint meaningless or the resumed run differ from an uninterrupted one.
  A setting that a run's config.json predates is read as its default.

  Raises:
    ValueError: the folder holds a run of another problem or other settings.
  """
  path = os.path.join(checkpoint_path, CONFIG_FILE)
  current = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists, as saved
  if not os.path.isfile(path):
    atomic.write_json_atomically(path, current)
    return
  with open(path) as f:
    saved = json.load(f)
  saved_problem = saved.get("problem", "classification")
  if saved_problem != current["problem"]:
    raise ValueError(f"{checkpoint_path!r} holds a {saved_problem} run; use a new "
                     f"--checkpoint_path for the {current['problem']}.")
  defaults = json.loads(json.dumps(type(config)().to_dict()))

  def value(d, group, name):
    return (d.get(group, {}) if group else d).get(name, MISSING)

  changed = []
  for group, names in config.RESUME_FIELDS.items():
    for name in names:
      old, new = value(saved, group, name), value(current, group, name)
      if old is MISSING:
        old = value(defaults, group, name)
      if old != new:
        changed.append(f"{group + '.' if group else ''}{name}: {old!r} -> {new!r}")
  if changed:
    raise ValueError(
        f"{checkpoint_path!r} holds a run with other settings ({'; '.join(changed)}). "
        "Resume with the same flags, or use a new --checkpoint_path.")
