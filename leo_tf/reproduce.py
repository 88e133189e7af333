r"""Stage 3 of the paper's appendix B.7: `python -m leo_tf.reproduce --flagfile=mini.flags`.

  python -m leo_tf.reproduce --flagfile=mini.flags --num_seeds=5     # the published recipe
  python -m leo_tf.reproduce --flagfile=mini.flags --seeds=2,3       # a subset, in another process
  python -m leo_tf.reproduce --flagfile=sines.flags --num_seeds=3    # regression (MSE)

The paper chooses hyperparameters on meta-validation (stage 2: the published
flagfiles hold the chosen values), then trains the model again from scratch
several times on the meta-training and meta-validation classes together
(train_on_val), keeps each run's best checkpoint by meta-validation accuracy
(early stopping), meta-tests each on 50,000 tasks and reports the mean and the
standard deviation over the runs. This command does that with the flagfile's
settings:

  <checkpoint_path>/stage3/seed_<s>/   one ordinary run folder per seed s (the
                                       flagfile's --seed, then the next ones):
                                       checkpoints, TensorBoard, results_test.json
  <checkpoint_path>/stage3/seed_<s>/stage3_seed.json
                                       written last: the seed is finished (its
                                       settings and results)
  <checkpoint_path>/stage3/results.json
                                       written once every seed is finished: mean
                                       and sd over seeds, each seed's mean and 95%
                                       interval, the settings

Each seed is trained by the training command's own code
(classification.experiment.train, regression.experiment.train), so it resumes
after an interruption like `leo_tf.train`; a finished seed with the same
settings is skipped. Seeds run one after another; --seeds runs a subset, so
several processes (one per device or core) can share the seeds, and a last call
without --seeds gathers them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence, Union

from leo_tf.classification import experiment as classification_experiment
from leo_tf.core import statistics
from leo_tf.data import atomic
from leo_tf.outer import checkpoints
from leo_tf.outer import fit
from leo_tf.outer import lock
from leo_tf.regression import experiment as regression_experiment

PAPER_METATEST_TASKS = 50_000  # per run, appendix B.7
STAGE_FOLDER = "stage3"  # under --checkpoint_path
SEED_FILE = "stage3_seed.json"  # in a seed's run folder: written when the seed is finished
RESULTS_FILE = "results.json"  # in the stage-3 folder: written when every seed is finished
# Fields of a run configuration that do not change its results: a finished seed
# whose settings differ only in these is still finished.
PRESENTATION_FIELDS = ("progress", "summary_steps", "eval_chunk_mb")

RunConfig = Union[classification_experiment.RunConfig, regression_experiment.RegressionRunConfig]


@dataclasses.dataclass(frozen=True)
class Stage3Config:
  """Stage 3: the stage-2 run configuration `run`, trained again for several seeds."""

  run: RunConfig  # the flagfile's run; its checkpoint_path holds stage3/, its seed is the first
  num_seeds: int = 5  # runs from scratch (the paper: 5)
  seeds: tuple[int, ...] = ()  # the seeds this process trains (empty: every seed of the study)
  num_metatest_tasks: int = PAPER_METATEST_TASKS  # meta-test tasks per seed

  def __post_init__(self):
    if self.num_seeds < 1:
      raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}.")
    if self.num_metatest_tasks < 1:
      raise ValueError(f"stage3_metatest_tasks must be >= 1, got {self.num_metatest_tasks}.")
    study = study_seeds(self)
    unknown = [s for s in self.seeds if s not in study]
    if unknown or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(
          f"seeds must be distinct seeds of the study, {study} (--seed={self.run.outer.seed} "
          f"and the next, --num_seeds={self.num_seeds}); got {list(self.seeds)}.")

  @property
  def problem(self) -> str:
    return self.run.to_dict()["problem"]

  @property
  def folder(self) -> str:
    return os.path.join(self.run.outer.checkpoint_path, STAGE_FOLDER)


def study_seeds(config: Stage3Config) -> list[int]:
  """The seeds of the study: --seed and the next integers, num_seeds of them.

  A regression run draws its held-out tasks from eval_seed, which must differ
  from the training seed (regression.experiment): that seed is passed over.
  """
  reserved = getattr(config.run, "eval_seed", None)
  seeds, s = [], config.run.outer.seed
  while len(seeds) < config.num_seeds:
    if s != reserved:
      seeds.append(s)
    s += 1
  return seeds


def seed_config(config: Stage3Config, seed: int) -> RunConfig:
  """The run configuration of one seed: its folder, its seed, train_on_val, the meta-test size."""
  run = config.run
  outer = dataclasses.replace(
      run.outer, seed=seed, checkpoint_path=os.path.join(config.folder, f"seed_{seed}"),
      num_metatest_tasks=config.num_metatest_tasks)
  if config.problem == "regression":  # tasks are drawn afresh: no classes to add
    return dataclasses.replace(run, outer=outer)
  return dataclasses.replace(run, outer=outer, results_dir="",
                             data=dataclasses.replace(run.data, train_on_val=True))


def _settings(run: RunConfig) -> dict[str, Any]:
  """What decides a seed's results: its configuration without presentation fields."""
  d = json.loads(json.dumps(run.to_dict()))  # tuples as JSON lists, as files hold them
  for name in PRESENTATION_FIELDS:
    d.pop(name, None)
  return d


def finished_seed(run: RunConfig) -> dict[str, Any] | None:
  """A seed's stage3_seed.json if it is finished with these settings, else None."""
  path = os.path.join(run.outer.checkpoint_path, SEED_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} could not be read ({e}); delete it to train that seed's last "
                     "steps and meta-test again.") from None
  return record if record.get("settings") == _settings(run) else None


def _training_end(run: classification_experiment.RunConfig) -> str | None:
  """How a classification run's latest checkpoint ended its training, if it did.

  "limit": at num_steps_limit; "early": early stopping stopped it (the
  patience counter reached); None: training goes on (or has not started).
  The fit loop, started again after an early stop, would train on to the next
  meta-validation, so a seed whose meta-test was interrupted is meta-tested
  without more training instead.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  o = run.outer
  latest = tf.train.latest_checkpoint(os.path.join(o.checkpoint_path, "ckpt"))
  if latest is None or not os.path.isfile(os.path.join(o.checkpoint_path, "best",
                                                       checkpoints.BEST_POINTER)):
    return None
  step = checkpoints.checkpoint_step(latest)
  if step is not None and step >= o.num_steps_limit:
    return "limit"
  evals = int(tf.train.load_variable(latest, "evals_without_improvement/.ATTRIBUTES/"
                                             "VARIABLE_VALUE"))
  if o.early_stopping_patience and evals >= o.early_stopping_patience:
    return "early"
  return None


def _train_seed(run: RunConfig, problem: str) -> dict[str, Any]:
  """Trains (or resumes) one seed and meta-tests its best checkpoint."""
  if problem == "regression":
    return regression_experiment.train(run)
  end = None if run.model_name == "prototypes" else _training_end(run)
  if end is None:
    return classification_experiment.train(run)
  how = "by early stopping" if end == "early" else "at the step limit"
  print(f"{run.outer.checkpoint_path}: training had ended {how}; meta-testing its best "
        "checkpoint.", flush=True)
  checkpoints.check_resume_config(run.outer.checkpoint_path, run)  # the same settings
  return {**classification_experiment.evaluate(run), "stopped_early": end == "early"}


def _scores(problem: str, results: dict[str, Any]) -> dict[str, dict[str, float]]:
  """{model: {"mean", "ci95"}} of one seed: meta-test accuracy, or each model's MSE."""
  if problem == "regression":
    return {name: {"mean": results[name]["mse"]["mean"], "ci95": results[name]["mse"]["ci95"]}
            for name in regression_experiment.MODELS if name in results}
  return {results["model_name"]: {"mean": results["mean_accuracy"], "ci95": results["ci95"]}}


def run(config: Stage3Config) -> dict[str, Any]:
  """Trains this process's seeds that are not finished, then gathers the study.

  Returns:
    {"complete": bool, "finished": [seeds], "missing": [seeds], ...}; when
    every seed of the study is finished, also what results.json holds (see
    gather), and results.json is written.

  Raises:
    ValueError, OSError: bad data or settings (as leo_tf.train).
    lock.RunFolderInUse: another process trains that seed now.
    fit.Interrupted: SIGTERM or SIGINT; the seed's checkpoint is written.
  """
  seeds = study_seeds(config)
  mine = list(config.seeds) or seeds
  done = [s for s in mine if finished_seed(seed_config(config, s))]
  todo = [s for s in mine if s not in done]
  _log(f"{len(seeds)} seeds {seeds} under {config.folder}; this process: {mine}"
       + (f" (finished: {done})" if done else "")
       + f"\nTensorBoard: tensorboard --logdir {config.folder}")
  t0 = time.time()
  for i, seed in enumerate(todo):
    run_config = seed_config(config, seed)
    left = ""
    if i:
      per_seed = (time.time() - t0) / i
      left = (f"; {per_seed / 60:.1f} min per seed, about "
              f"{per_seed * (len(todo) - i) / 60:.0f} min left")
    _log(f"seed {seed} ({i + 1} of {len(todo)} to run{left}): {run_config.outer.checkpoint_path}")
    results = _train_seed(run_config, config.problem)
    if not results.get("chief", True):
      continue  # a non-chief worker of a multi-worker run: the chief writes
    atomic.write_json_atomically(
        os.path.join(run_config.outer.checkpoint_path, SEED_FILE),
        {"seed": seed, "settings": _settings(run_config), "results": results,
         "scores": _scores(config.problem, results)})
  records = {s: finished_seed(seed_config(config, s)) for s in seeds}
  finished = [s for s in seeds if records[s]]
  missing = [s for s in seeds if not records[s]]
  if missing:
    _log(f"seeds finished: {finished}; still to run: {missing}. results.json is written when all "
         f"{len(seeds)} are: run the same command without --seeds once the others are done.")
    if finished:
      print(seed_table(config, [records[s] for s in finished]), flush=True)
    return {"complete": False, "finished": finished, "missing": missing}
  summary = gather(config, [records[s] for s in seeds])
  path = os.path.join(config.folder, RESULTS_FILE)
  print(summary["table"], flush=True)
  atomic.write_json_atomically(path, summary)
  _log(f"results: {path}")
  return summary


def gather(config: Stage3Config, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """results.json: per model, mean and sd over the seeds' meta-test means, and each seed's.

  The sd over seeds has ddof = 1 (core.statistics), the paper's +-; each
  seed's interval is its own 1.96 sd / sqrt(num_tasks) over tasks.
  """
  problem = config.problem
  names = list(records[0]["scores"])
  over_seeds = {}
  for name in names:
    means = [r["scores"][name]["mean"] for r in records]
    mean, ci, sd = statistics.confidence_interval(means)
    over_seeds[name] = {"mean": mean, "sd": sd, "ci95": ci, "min": min(means), "max": max(means)}
  per_seed = []
  for r in records:
    res = r["results"]
    row = {"seed": r["seed"], "scores": r["scores"],
           "run_folder": os.path.dirname(res["results_file"]), "results_file": res["results_file"]}
    if problem == "classification":
      row.update(checkpoint_step=res["checkpoint_step"], num_tasks=res["num_tasks"],
                 metavalid_accuracy=res["metavalid_accuracy"],
                 stopped_early=res.get("stopped_early"))
    else:
      row.update(num_tasks=res["num_tasks"],
                 checkpoint_step={n: res[n]["checkpoint_step"] for n in names})
    per_seed.append(row)
  settings = dict(records[0]["settings"])
  settings["outer"] = {k: v for k, v in settings["outer"].items()
                       if k not in ("seed", "checkpoint_path")}
  summary = {
      "stage": 3, "problem": problem, "metric": "mse" if problem == "regression" else "accuracy",
      "higher_is_better": problem != "regression", "seeds": [r["seed"] for r in records],
      "num_seeds": len(records), "num_metatest_tasks": config.num_metatest_tasks,
      "over_seeds": over_seeds, "per_seed": per_seed, "settings": settings,
      "folder": config.folder,
  }
  summary["table"] = seed_table(config, records)
  return summary


def _describe(config: Stage3Config) -> str:
  """The settings in one line."""
  o = config.run.outer
  outer = (f"{o.num_steps_limit} steps, meta-batch {o.metatrain_batch_size}, outer_lr "
           f"{o.outer_lr:g}, meta-validation every {o.checkpoint_steps} steps on "
           f"{o.num_metavalid_tasks} tasks, best checkpoint by meta-validation"
           + (f", early stopping after {o.early_stopping_patience} without improvement"
              if o.early_stopping_patience else ""))
  if config.problem == "regression":
    return (f"sines and lines, {config.run.tasks.num_tr_examples}-shot, models "
            f"{', '.join(config.run.models)}; LEO {outer}; {config.num_metatest_tasks:,} held-out "
            f"tasks per seed (eval_seed {config.run.eval_seed})")
  d = config.run.data
  return (f"{config.run.model_name}, {d.num_classes}-way {d.num_tr_examples_per_class}-shot on "
          f"{d.dataset_name}/{d.embedding_crop}, meta-trained on the train + val classes "
          f"(train_on_val); {outer}; {config.num_metatest_tasks:,} meta-test tasks per seed")


def seed_table(config: Stage3Config, records: Sequence[dict[str, Any]]) -> str:
  """The printed table: each seed's mean with its 95% interval, then mean +- sd over seeds."""
  regression = config.problem == "regression"
  names = list(records[0]["scores"])
  unit = "MSE (lower is better)" if regression else "accuracy (%)"
  scale, digits = (1.0, 4) if regression else (100.0, 2)
  lines = [f"Stage 3 (appendix B.7), {len(records)} seeds: {_describe(config)}", "",
           "| seed | " + " | ".join(f"{n} meta-test {unit}" for n in names) + " |",
           "|---" * (len(names) + 1) + "|"]
  for r in records:
    scores = r["scores"]
    lines.append(f"| {r['seed']} | " + " | ".join(
        f"{scale * scores[n]['mean']:.{digits}f} ± {scale * scores[n]['ci95']:.{digits}f}"
        for n in names) + " |")
  cells = []
  for n in names:
    mean, _, sd = statistics.confidence_interval([r["scores"][n]["mean"] for r in records])
    cells.append(f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}")
  lines.append(f"| mean ± sd over {len(records)} seeds | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("(a seed's ± is its 95% interval over tasks; the last row's ± is the standard "
               "deviation over seeds, ddof 1, the paper's ±)")
  return "\n".join(lines)


def _log(text: str) -> None:
  print(f"[stage 3 {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------
# The command.
# ----------------------------------------------------------------------------


def define_flags() -> None:
  """Stage 3's own flags, beside the training flags (leo_tf.command_line)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if "num_seeds" in flags.FLAGS:  # defined already (a test module, then the command)
    return
  flags.DEFINE_integer("num_seeds", 5, "Runs from scratch, one per seed: --seed and the next "
                       "(the paper: 5).")
  flags.DEFINE_list("seeds", [], "Train only these seeds of the study in this process (e.g. 2,3 "
                    "on another device); a later call without --seeds gathers them.")
  flags.DEFINE_integer("stage3_metatest_tasks", None,
                       f"Meta-test tasks per seed (default: the paper's {PAPER_METATEST_TASKS:,} "
                       "for classification; regression: --num_metatest_tasks). "
                       "--num_metatest_tasks is stage 2's.")


def config_from_flags(problem_config: RunConfig) -> Stage3Config:
  """The Stage3Config the parsed flags describe, around the training flags' run configuration.

  Raises:
    ValueError: a flag that contradicts stage 3 (named), or a bad stage-3 value.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.evaluation_mode:
    raise ValueError("--evaluation_mode: stage 3 trains; to meta-test one seed's run again use "
                     "python -m leo_tf.train --evaluation_mode --checkpoint_path=<its folder>.")
  if f.export_dir:
    raise ValueError("--export_dir: stage 3 exports nothing; export a seed's run with python -m "
                     "leo_tf.export --checkpoint_path=<checkpoint_path>/stage3/seed_<s>.")
  if f.results_dir:
    raise ValueError("--results_dir: each seed's results go in its run folder and the study's in "
                     "<checkpoint_path>/stage3/results.json; drop --results_dir.")
  if f.problem == "classification" and f["train_on_val"].present and not f.train_on_val:
    raise ValueError("--train_on_val=false contradicts stage 3, which meta-trains on the train + "
                     "val classes; drop it (leo_tf.train runs stage 2 without them).")
  try:
    seeds = tuple(int(s) for s in f.seeds)
  except ValueError:
    raise ValueError(f"seeds must be integers separated by commas, got {f.seeds}.") from None
  tasks = f.stage3_metatest_tasks
  if tasks is None:
    tasks = f.num_metatest_tasks if f.problem == "regression" else PAPER_METATEST_TASKS
  return Stage3Config(run=problem_config, num_seeds=f.num_seeds, seeds=seeds,
                      num_metatest_tasks=tasks)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from leo_tf import command_line  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import distribute  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import progress  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  progress.start_command(argv, "leo_tf.reproduce")
  if f.num_cpu_devices > 1:
    distribute.configure_cpu_devices(f.num_cpu_devices)  # before TensorFlow starts
  config_from_run_flags = (command_line.regression_config_from_flags if f.problem == "regression"
                           else command_line.config_from_flags)
  try:
    config = config_from_flags(config_from_run_flags())
  except ValueError as e:
    progress.command_error("leo_tf.reproduce", str(e), command_line.FLAG_NAMES[f.problem])
  try:
    run(config)
  except fit.Interrupted as e:  # the message is printed; the checkpoint is written
    sys.exit(128 + e.signum)
  except (ValueError, OSError, lock.RunFolderInUse) as e:
    sys.exit(f"leo_tf.reproduce: error: {e}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from leo_tf import command_line  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import progress as progress_lib  # pylint: disable=g-import-not-at-top
  define_flags()
  absl_flags.adopt_module_key_flags(command_line)  # --help lists the training flags
  app.run(main, flags_parser=progress_lib.flags_parser("leo_tf.reproduce"))
