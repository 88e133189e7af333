"""One hyperparameter study on Optuna, run by any number of workers on one or many machines.

Every trial is a normal training run (classification.experiment.train or
regression.experiment.train, in this process) of the base configuration with a
sample of the search space, in its own run folder <study_dir>/trials/<number>
(checkpoints, TensorBoard summaries, meta-test results). Its objective is its
best meta-validation score (accuracy, higher is better; MSE for regression,
lower is better), the score of the run's best checkpoint. After each
meta-validation the trial reports the score to the pruner, which stops a trial
that trails the others (outer.fit.validation_listener).

The study lives in an Optuna RDB storage: SQLite in <study_dir>/study.db by
default (workers on one machine), or PostgreSQL / MySQL by URL (workers on
several machines). A worker runs trials until the study holds `num_trials`
finished ones (completed or pruned), counted in the storage, so workers share
one budget and never run a trial twice. Each running trial records a heartbeat;
a trial whose worker died (kill -9, a lost machine) goes stale and is marked
failed by the next worker that looks, and a copy with the same settings is
queued that continues the dead trial's run folder from its latest checkpoint.
A killed trial is therefore never counted; its settings are trained once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import time
import warnings
import zlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import optuna
from optuna.trial import TrialState
import sqlalchemy
import tensorflow as tf

from leo_tf.classification import experiment as classification_experiment
from leo_tf.core.config import check_at_least, check_choice
from leo_tf.outer import checkpoints
from leo_tf.outer import fit as fit_lib
from leo_tf.outer import lock
from leo_tf.regression import experiment as regression_experiment
from leo_tf.search import space as space_lib

SAMPLERS = ("random", "tpe")  # random: the paper's random search; tpe: model-based
PRUNERS = ("median", "halving", "none")
STORAGE_FILE = "study.db"
TRIALS_FOLDER = "trials"
# Run settings that do not change what a trial learns: left out of the base's fingerprint.
RUN_ONLY_FIELDS = ("checkpoint_path", "progress", "results_dir", "summary_steps", "eval_chunk_mb")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """How a study is searched (the base run configuration and the space come beside it)."""

  study_dir: str  # the study's folder: study.db, trials/, best.flags, leaderboard, plots
  num_trials: int = 20  # finished trials (completed or pruned) the study should hold
  sampler: str = "random"  # random (the paper's) or tpe
  pruner: str = "median"  # median, halving (successive halving) or none
  prune_after_trials: int = 5  # the median pruner prunes once so many trials completed
  prune_warmup_steps: int = 0  # no pruning at meta-validations of earlier steps
  tpe_startup_trials: int = 10  # TPE samples at random until so many trials finished
  seed: int = 0  # the random sampler's draws for trial t depend only on (seed, t)
  storage: str = ""  # an RDB URL shared by several machines ("": SQLite in study_dir)
  study_name: str = ""  # the study's name in the storage ("": the study folder's name)
  heartbeat_seconds: int = 60  # a running trial's heartbeat; stale after twice this
  max_retries: int = 2  # a trial whose worker died is run again at most so many times
  max_failures_in_a_row: int = 3  # a worker stops after so many failed trials in a row
  # Trial 0 of a new study runs the base's own values of the searched settings: the
  # yardstick, on the same tasks and under the same pruner, that the samples must beat.
  base_first: bool = False

  def __post_init__(self):
    check_choice(self, "sampler", SAMPLERS)
    check_choice(self, "pruner", PRUNERS)
    check_at_least(self, 0, "num_trials", "prune_after_trials", "prune_warmup_steps",
                   "tpe_startup_trials", "max_retries")
    check_at_least(self, 1, "heartbeat_seconds", "max_failures_in_a_row")
    if not self.study_dir:
      raise ValueError("study_dir must name a folder (e.g. runs/search_demo).")

  @property
  def name(self) -> str:
    return self.study_name or os.path.basename(os.path.normpath(self.study_dir))

  @property
  def storage_url(self) -> str:
    if self.storage:
      return self.storage
    return "sqlite:///" + os.path.abspath(os.path.join(self.study_dir, STORAGE_FILE))


class SearchError(RuntimeError):
  """A study that cannot go on (refused at start, or trials failing one after another)."""


class _TrialFailed(Exception):
  """A trial that could not train (its message is stored with it); the study goes on."""


class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
  """Random search whose sample for trial t depends only on (seed, t, setting).

  Optuna's RandomSampler draws from one generator per process, so two workers
  with the same seed would sample the same settings; here each draw is seeded
  by the trial's number, which the storage hands out once.
  """

  def __init__(self, seed: int):
    self.seed = seed

  def infer_relative_search_space(self, study, trial):
    return {}

  def sample_relative(self, study, trial, search_space):
    return {}

  def sample_independent(self, study, trial, param_name, param_distribution):
    seed = zlib.crc32(f"{self.seed}/{trial.number}/{param_name}".encode("utf-8"))
    return optuna.samplers.RandomSampler(seed=seed).sample_independent(
        study, trial, param_name, param_distribution)


def make_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
  if search.sampler == "tpe":
    # No seed: workers with one seed would draw the same start-up samples.
    return optuna.samplers.TPESampler(n_startup_trials=search.tpe_startup_trials,
                                      constant_liar=True, multivariate=True)
  return TrialSeededRandomSampler(search.seed)


def make_pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
  if search.pruner == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=search.prune_after_trials,
                                       n_warmup_steps=search.prune_warmup_steps)
  if search.pruner == "halving":
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(search.prune_warmup_steps, 1) if search.prune_warmup_steps else "auto",
        reduction_factor=3)
  return optuna.pruners.NopPruner()


def _experiment(config):
  """The experiment module that trains `config` (classification or regression)."""
  if isinstance(config, regression_experiment.RegressionRunConfig):
    return regression_experiment
  return classification_experiment


def direction(config) -> str:
  """'maximize' (accuracy) or 'minimize' (MSE: regression)."""
  return "minimize" if _experiment(config) is regression_experiment else "maximize"


def base_fingerprint(config, settings: Sequence[space_lib.Setting],
                     fields: Mapping[str, space_lib.Field]) -> dict[str, Any]:
  """The base configuration as a flat {section.field: value}, less the searched and run-only fields.

  Two studies of the same base (whatever their folders or progress flags)
  have equal fingerprints.
  """
  searched = {(fields[s.name].section, fields[s.name].field) for s in settings}
  flat = {}
  for key, value in config.to_dict().items():
    if isinstance(value, dict):
      for name, inner in value.items():
        if (key, name) not in searched and name not in RUN_ONLY_FIELDS:
          flat[f"{key}.{name}"] = inner
    elif key not in RUN_ONLY_FIELDS:
      flat[key] = value
  return json.loads(json.dumps(flat))  # tuples -> lists, as the storage gives them back


def _differences(stored: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
  return [f"{k}: {stored.get(k, '(unset)')!r} there, {ours.get(k, '(unset)')!r} here"
          for k in sorted(set(stored) | set(ours)) if stored.get(k) != ours.get(k)]


@contextlib.contextmanager
def _creating(search: SearchConfig) -> Iterator[None]:
  """Workers on one machine create the SQLite study one at a time (two creating its tables at
  once fail with "table ... already exists"); a server's storage is created with retries."""
  if not search.storage_url.startswith("sqlite"):
    yield
    return
  with open(os.path.join(search.study_dir, ".create.lock"), "w", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _create_or_load(search: SearchConfig, config, attempts: int = 3) -> optuna.Study:
  """The study in its RDB storage, with heartbeats and the retry of trials whose worker died."""
  sqlite = search.storage_url.startswith("sqlite")
  engine_kwargs = {"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True}
  for attempt in range(attempts):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            search.storage_url, engine_kwargs=engine_kwargs,
            heartbeat_interval=search.heartbeat_seconds,
            grace_period=2 * search.heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=search.max_retries, inherit_intermediate_values=True))
      return optuna.create_study(storage=storage, study_name=search.name, load_if_exists=True,
                                 direction=direction(config), sampler=make_sampler(search),
                                 pruner=make_pruner(search))
    except ImportError as e:  # SQLAlchemy's driver for the URL's database is not installed
      raise SearchError(
          f"--storage={_without_password(search.storage_url)}: no database driver for it "
          f"({e.__cause__ or e}); install the one SQLAlchemy uses for this URL (PostgreSQL: "
          "pip install 'psycopg[binary]', or name psycopg2 in the URL, postgresql+psycopg2://; "
          "MySQL: pip install pymysql with mysql+pymysql://).") from None
    except sqlalchemy.exc.SQLAlchemyError:  # another machine created the tables meanwhile
      if attempt == attempts - 1:
        raise
      time.sleep(1.0 + attempt)
  raise AssertionError("unreachable")


def _without_password(url: str) -> str:
  """A storage URL for messages: user:password@ becomes user:***@."""
  return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def open_study(search: SearchConfig, config, settings: Sequence[space_lib.Setting],
               fields: Mapping[str, space_lib.Field]) -> optuna.Study:
  """Creates the study, or loads it after checking it was made for this base and this space.

  Raises:
    SearchError: the study folder (or the storage's study of that name) holds a
      study of another base configuration, space or objective.
  """
  os.makedirs(search.study_dir, exist_ok=True)
  ours = {"base": base_fingerprint(config, settings, fields),
          "space": space_lib.describe(settings), "direction": direction(config)}
  base_values = space_lib.values(config, settings, fields) if search.base_first else None
  with _creating(search):
    study = _create_or_load(search, config)
    stored = study.user_attrs
    if not stored:
      for key, value in ours.items():
        study.set_user_attr(key, value)
      if base_values is not None:  # inside the lock: one worker creates, one enqueues
        study.enqueue_trial(base_values, user_attrs={"base": True})
      return study
  where = (f"the study folder {search.study_dir!r}" if not search.storage else
           f"the study {search.name!r} in {search.storage}")
  fresh = "use another --study_dir (or --study_name)"
  if stored.get("base") != ours["base"]:
    raise SearchError(f"{where} was made for another base flagfile: "
                      f"{'; '.join(_differences(stored['base'], ours['base'])[:6])}. Continue it "
                      f"with the base it was made for, or {fresh} for this one.")
  if stored.get("space") != ours["space"]:
    raise SearchError(f"{where} was made with another search space ({stored.get('space')}); "
                      f"pass the space it was made with, or {fresh} for this one.")
  return study


def _count(study: optuna.Study) -> dict[TrialState, int]:
  counts = {state: 0 for state in TrialState}
  for t in study.get_trials(deepcopy=False):
    counts[t.state] += 1
  return counts


def run_folder(search: SearchConfig, trial) -> str:
  """The trial's run folder; a retry of a trial whose worker died continues that trial's."""
  relative = trial.user_attrs.get("run_folder")
  return os.path.join(search.study_dir, relative) if relative else ""


def _best_score(config, folder: str) -> float:
  """The score of the run's best checkpoint (its best meta-validation)."""
  path = folder if _experiment(config) is classification_experiment else os.path.join(folder,
                                                                                      "leo")
  _, record = checkpoints.best_checkpoint(path)
  (value,) = [v for k, v in record.items() if k.startswith("metavalid_")]
  return float(value)


def _trial_config(config, params, fields, folder):
  """The base configuration with the trial's sample, training into `folder`."""
  outer = dataclasses.replace(config.outer, checkpoint_path=folder)
  top = {"outer": outer}
  if _experiment(config) is regression_experiment:
    top["models"] = ("leo",)  # the search tunes LEO; MAML is the base's own business
  return space_lib.apply(dataclasses.replace(config, **top), params, fields)


def _meta_test(results: Mapping[str, Any]) -> dict[str, float]:
  if "mean_accuracy" in results:
    return {"metatest_accuracy": results["mean_accuracy"], "metatest_ci95": results["ci95"]}
  mse = results.get("leo", {}).get("mse", {})
  return {"metatest_mse": mse.get("mean"), "metatest_ci95": mse.get("ci95")}


def make_objective(search: SearchConfig, config, settings, fields, log: Callable[[str], None],
                   current: list[int]):
  """The Optuna objective: one training run of the base with a sample of the space."""
  worker = f"{socket.gethostname()}:{os.getpid()}"

  def objective(trial: optuna.Trial) -> float:
    current[:] = [trial.number]
    study = trial.study
    others = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
                 if t.number < trial.number)
    if others >= search.num_trials:  # another worker took the last trial meanwhile
      trial.set_user_attr("note", f"not run: the study had its {search.num_trials} trials")
      raise _TrialFailed("surplus")
    params = space_lib.suggest(trial, settings)
    folder = run_folder(search, trial)
    if folder:
      try:  # continue the dead trial's run: it must not be held by a live process
        with lock.RunLock(folder, "search trial"):
          pass
      except lock.RunFolderInUse:
        folder = ""
    if not folder:
      relative = os.path.join(TRIALS_FOLDER, f"{trial.number:04d}")
      trial.set_user_attr("run_folder", relative)
      folder = os.path.join(search.study_dir, relative)
    trial.set_user_attr("worker", worker)
    retried = _retry_history(study, trial.number)
    origin = ""
    if retried:
      # The step it resumes from: the newest of ckpt/'s and best/'s checkpoints (a kill can
      # come after the first best and before the first ckpt/ checkpoint is complete).
      resumed_at = max((step for step, _ in checkpoints.resume_candidates(folder)), default=0)
      trial.set_user_attr("resumed_at_step", resumed_at)
      origin = (f" (continues trial {retried[-1]}, whose worker stopped, from step "
                f"{resumed_at})")
    log(f"Trial {trial.number}{origin}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items())
        + f"; run folder {folder}")
    run_config = _trial_config(config, params, fields, folder)

    def listener(step: int, score: float) -> None:
      trial.report(score, step)
      trial.set_user_attr("last_step", step)
      if trial.should_prune():
        log(f"Trial {trial.number} pruned at step {step}: its meta-validation score {score:.4g} "
            f"trails the other trials' at that step ({search.pruner} pruner).")
        raise optuna.TrialPruned(f"trailing the other trials at step {step}")

    started = time.time()
    try:
      with fit_lib.validation_listener(listener):
        results = _experiment(config).train(run_config)
    except (ValueError, ArithmeticError, lock.RunFolderInUse, tf.errors.OpError) as e:
      trial.set_user_attr("note", f"failed: {e}"[:300])
      raise _TrialFailed(str(e)) from e
    finally:
      trial.set_user_attr("seconds", round(time.time() - started, 1))
    for key, value in _meta_test(results).items():
      trial.set_user_attr(key, value)
    return _best_score(config, folder)

  return objective


def _retry_history(study: optuna.Study, number: int) -> list[int]:
  (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
  return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)


def run_worker(search: SearchConfig, config, settings: Sequence[space_lib.Setting],
               fields: Mapping[str, space_lib.Field],
               log: Callable[[str], None] = print,
               after_trial: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
  """Runs trials of the study until it holds search.num_trials finished ones.

  Several workers (processes, machines) may run this on one study at once.
  When the others are running the last trials, this one waits for them (and
  takes over a trial whose worker died) instead of starting more.

  Args:
    search: the study and how to search it.
    config: the base run configuration (its checkpoint_path is replaced per trial).
    settings: the space (space.read_space), checked against config here.
    fields: space.searchable(config, ...).
    log: where progress messages go.
    after_trial: called with the study after each trial this worker ran.

  Returns:
    The study.

  Raises:
    ValueError: a setting the configuration refuses at an end of its range.
    SearchError: another base or space in the study folder; trials failing in a row.
    outer.fit.Interrupted: SIGTERM or SIGINT during a trial (after its checkpoint,
      and after queueing its continuation).
  """
  space_lib.check_against(config, settings, fields)
  study = open_study(search, config, settings, fields)
  current: list[int] = []
  objective = make_objective(search, config, settings, fields, log, current)
  failures_in_a_row = 0
  waiting = False
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=search.max_retries,
                                                             inherit_intermediate_values=True)
    while True:
      optuna.storages.fail_stale_trials(study)  # trials of dead workers: FAIL, and queued again
      counts = _count(study)
      finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
      if finished >= search.num_trials:
        break
      if finished + counts[TrialState.RUNNING] >= search.num_trials:
        if not waiting:
          log(f"Waiting for the {counts[TrialState.RUNNING]} running trial(s) of other workers "
              f"({finished} of {search.num_trials} finished).")
          waiting = True
        time.sleep(min(search.heartbeat_seconds, 5))
        continue
      waiting = False
      current.clear()
      try:
        study.optimize(objective, n_trials=1, catch=(_TrialFailed,))
      except fit_lib.Interrupted:
        (trial,) = [t for t in study.get_trials(deepcopy=False) if t.number == current[0]]
        retry(study, trial)  # the same command continues it from its checkpoint
        log(f"Trial {trial.number} stopped; it continues from its checkpoint when the search "
            f"is started again.")
        raise
      if current:
        (trial,) = [t for t in study.get_trials(deepcopy=False) if t.number == current[0]]
        if trial.state == TrialState.FAIL and trial.user_attrs.get("note", "").startswith("failed"):
          failures_in_a_row += 1
          if failures_in_a_row >= search.max_failures_in_a_row:
            raise SearchError(f"{failures_in_a_row} trials in a row failed, the last with: "
                              f"{trial.user_attrs['note']}. Check the base flagfile and the space.")
        else:
          failures_in_a_row = 0
        if after_trial is not None:
          after_trial(study)
  return study
