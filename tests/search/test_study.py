"""leo_tf.search end to end on a tiny synthetic set: a search prunes a forced-bad trial and
writes its flagfile, leaderboard and plots; workers in several processes share one study
without running a trial twice; a worker killed with kill -9 mid-trial is taken over."""

import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from absl import flags
from optuna.trial import TrialState

from leo_tf import command_line
from leo_tf.data import synthetic
from leo_tf.outer import checkpoints
from leo_tf.outer import lock
from leo_tf.search import report
from leo_tf.search import space
from leo_tf.search import study as study_lib
from tests.paths import REPO

D = 32
SYNTH = synthetic.SyntheticConfig(num_train_classes=12, num_val_classes=6, num_test_classes=6,
                                  images_per_class=30, embedding_dim=D, signal_dim=8,
                                  nuisance_dim=8, seed=1)
SPACE = "outer_lr  1e-4  1.0  log\nkl_weight  1e-3  1.0  log  # beta\n"
GOOD = {"outer_lr": 3e-3, "kl_weight": 0.01}
BAD = {"outer_lr": 1.0, "kl_weight": 1.0}  # Adam steps of 1 scramble every weight
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _training_flags(data_path):
  return [f"--data_path={data_path}", "--dataset_name=synthetic", f"--embedding_dim={D}",
          "--num_latents=8", "--inner_unroll_length=1", "--finetuning_unroll_length=1",
          "--num_val_examples_per_class=5", "--metatrain_batch_size=4", "--num_steps_limit=10",
          "--checkpoint_steps=5", "--num_metavalid_tasks=20", "--num_metatest_tasks=20",
          "--jit_compile=false", "--progress=false", "--summary_steps=5", "--seed=2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """The tiny base: its training flags, its run configuration, the space file and its settings."""
  folder = tmp_path_factory.mktemp("search")
  data_path = str(folder / "embeddings")
  synthetic.generate(SYNTH, data_path, num_eval_tasks=20)
  training_flags = _training_flags(data_path)
  flags.FLAGS(["leo_tf.search", *training_flags])
  try:
    config = command_line.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  space_file = folder / "space.txt"
  space_file.write_text(SPACE)
  fields = space.searchable(config, {})
  return training_flags, config, str(space_file), space.read_space(str(space_file), fields), fields


def _trials(study_dir):
  return optuna.load_study(study_name=os.path.basename(study_dir),
                           storage=f"sqlite:///{study_dir}/study.db").get_trials()


def test_a_tiny_search_prunes_the_bad_trial_and_writes_its_outputs(base, tmp_path, capsys):
  training_flags, config, _, settings, fields = base
  search = study_lib.SearchConfig(study_dir=str(tmp_path / "study"), num_trials=3,
                                  prune_after_trials=1, heartbeat_seconds=1)
  study = study_lib.open_study(search, config, settings, fields)
  study.enqueue_trial(GOOD)  # trial 0, the yardstick
  study.enqueue_trial(BAD)  # trial 1: pruned at its first meta-validation
  study = study_lib.run_worker(search, config, settings, fields)
  trials = study.get_trials()
  good, bad, sampled = trials
  assert [good.state, bad.state] == [TrialState.COMPLETE, TrialState.PRUNED]
  assert sampled.state in study_lib.FINISHED and sampled.params not in (GOOD, BAD)
  assert good.params == GOOD and bad.params == BAD and bad.user_attrs["last_step"] == 5
  assert bad.intermediate_values[5] < good.intermediate_values[5]
  # The objective is the best checkpoint's meta-validation score, the best report.
  completed = [t for t in trials if t.state == TrialState.COMPLETE]
  for t in completed:
    _, record = checkpoints.best_checkpoint(os.path.join(search.study_dir, t.user_attrs[
        "run_folder"]))
    assert t.value == record["metavalid_accuracy"] == max(t.intermediate_values.values())
    assert sorted(t.intermediate_values) == [5, 10]
    assert 0.2 < t.user_attrs["metatest_accuracy"] <= 1  # each trial is a whole leo_tf.train run
  assert "Trial 1 pruned at step 5: its meta-validation score" in capsys.readouterr().out
  written = report.write_all(study, settings, search.study_dir, training_flags, "the test",
                             "accuracy")
  best = max(completed, key=lambda t: t.value)
  with open(written["best_flagfile"]) as f:
    lines = [l.strip() for l in f if not l.startswith("#")]
  assert f"--outer_lr={best.params['outer_lr']!r}" in lines
  assert f"--kl_weight={best.params['kl_weight']!r}" in lines
  assert f"--checkpoint_path={search.study_dir}/best_run" in lines
  assert "--num_latents=8" in lines and len(lines) == len(training_flags) + 3
  # best.flags is a flagfile leo_tf.train reads back to the best trial's configuration.
  flags.FLAGS(["leo_tf.train", f"--flagfile={written['best_flagfile']}"])
  try:
    again = command_line.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert again.outer.outer_lr == best.params["outer_lr"]
  assert again.model.kl_weight == best.params["kl_weight"]
  assert again.model == space.apply(config, best.params, fields).model
  with open(written["leaderboard"]) as f:
    board = f.read()
  assert "| 1 | pruned at step 5 |" in board
  assert board.count("| complete |") == len(completed) and board.count("\n| ") == 3 + 1
  # The importances need two completed trials.
  expected = report.PLOTS if len(completed) >= 2 else report.PLOTS[:2]
  assert [os.path.basename(p) for p in written["plots"]] == list(expected)
  for path in written["plots"]:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000


def _worker(training_flags, space_file, study_dir, num_trials):
  return subprocess.Popen(
      [sys.executable, "-m", "leo_tf.search", *training_flags, f"--space={space_file}",
       f"--study_dir={study_dir}", f"--num_trials={num_trials}", "--heartbeat_seconds=2",
       "--pruner=none", "--num_steps_limit=20"],
      cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _holder(folder):
  """The pid in a run folder's lock, or None."""
  try:
    with open(os.path.join(folder, lock.LOCK_FILE)) as f:
      return json.load(f)["pid"]
  except (OSError, ValueError):
    return None


def test_workers_share_the_study_and_a_killed_trial_is_continued_not_counted(base, tmp_path):
  training_flags, config, space_file, settings, fields = base
  study_dir = str(tmp_path / "shared")
  num_trials = 3
  first = _worker(training_flags, space_file, study_dir, num_trials)  # another process
  deadline = time.time() + 600

  def first_trial_folders():
    return [f for f in glob.glob(os.path.join(study_dir, "trials", "*"))
            if _holder(f) == first.pid]

  while not first_trial_folders() and time.time() < deadline and first.poll() is None:
    time.sleep(0.1)
  assert first_trial_folders(), first.communicate()[0][-3000:]
  # While it trains, this process joins the study as a second worker (the same command).
  search = study_lib.SearchConfig(study_dir=study_dir, num_trials=num_trials, pruner="none",
                                  heartbeat_seconds=2)
  same_base = dataclasses.replace(config, outer=dataclasses.replace(config.outer,
                                                                    num_steps_limit=20))
  outcome = {}

  def second_worker():
    try:
      study_lib.run_worker(search, same_base, settings, fields)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised below)
      outcome["error"] = e

  second = threading.Thread(target=second_worker)
  second.start()
  # kill -9 the first worker once its trial has a checkpoint.
  (folder,) = first_trial_folders()
  while not glob.glob(os.path.join(folder, "ckpt", "ckpt-5.index")) and first.poll() is None:
    time.sleep(0.05)
  first.send_signal(signal.SIGKILL)
  first.wait(timeout=30)
  killed = int(os.path.basename(folder))
  second.join(timeout=600)
  assert not second.is_alive() and "error" not in outcome, outcome
  trials = _trials(study_dir)
  finished = [t for t in trials if t.state == TrialState.COMPLETE]
  assert len(finished) == num_trials, [(t.number, t.state) for t in trials]
  # The killed trial is failed, and run again once, in its own run folder, from its checkpoint.
  failed = [t for t in trials if t.state == TrialState.FAIL]
  assert [t.number for t in failed] == [killed]
  assert failed[0].user_attrs["worker"] == f"{socket.gethostname()}:{first.pid}"
  (retry,) = [t for t in finished
              if optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t) == [killed]]
  assert retry.params == failed[0].params
  assert retry.user_attrs["run_folder"] == failed[0].user_attrs["run_folder"]
  # It resumed at the killed trial's checkpoint; the reports before it are inherited.
  resumed_at = retry.user_attrs["resumed_at_step"]
  assert resumed_at >= 5
  assert sorted(retry.intermediate_values) == [s for s in (5, 10, 15, 20)
                                               if s > resumed_at or s in failed[0].intermediate_values]
  # The two workers trained at the same time, other trials; no settings or folder twice.
  others = [t for t in finished if t is not retry]
  assert min(t.datetime_start for t in others) < failed[0].datetime_complete
  assert killed not in [t.number for t in others]
  assert len({t.user_attrs["run_folder"] for t in finished}) == num_trials
  assert len({tuple(sorted(t.params.items())) for t in finished}) == num_trials


def test_a_storage_without_its_database_driver_says_what_to_install(base, tmp_path):
  # SQLAlchemy picks the driver from the URL; one that is not installed (pg8000 here) is a
  # SearchError that names the URL without its password and the package to install.
  _, config, _, settings, fields = base
  search = study_lib.SearchConfig(study_dir=str(tmp_path / "study"), num_trials=1,
                                  storage="postgresql+pg8000://leo:secret@dbhost/leo")
  with pytest.raises(study_lib.SearchError) as error:
    study_lib.open_study(search, config, settings, fields)
  message = str(error.value)
  assert message.startswith("--storage=postgresql+pg8000://leo:***@dbhost/leo: no database "
                            "driver for it (No module named 'pg8000')")
  assert "pip install 'psycopg[binary]'" in message and "secret" not in message
