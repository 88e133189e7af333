"""Tests for leo_tf.outer.lock: one writer per run folder, across processes."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from leo_tf.classification import experiment as classification_experiment
from leo_tf.core.config import OuterConfig
from leo_tf.outer import lock
from leo_tf.serving import export
from tests.paths import REPO

HOLD = """
import sys
from leo_tf.outer import lock
with lock.RunLock(sys.argv[1], "training"):
  print("held", flush=True)
  sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


@pytest.fixture
def holder(tmp_path):
  """Another process that holds tmp_path/run's lock."""
  folder = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  yield folder, proc
  if proc.poll() is None:
    proc.kill()
  proc.wait(timeout=10)


def test_a_second_process_is_refused_with_the_first_named(holder):
  folder, proc = holder
  with pytest.raises(lock.RunFolderInUse) as refused:
    lock.RunLock(str(folder), "training").acquire()
  message = str(refused.value)
  assert f"is in use by process {proc.pid} on {socket.gethostname()} (training, started " in message
  assert "use another --checkpoint_path" in message and os.path.join(str(folder), ".lock") in message
  # Evaluating into or exporting from the folder is refused the same way, before any work.
  config = classification_experiment.RunConfig(outer=OuterConfig(checkpoint_path=str(folder)))
  with pytest.raises(lock.RunFolderInUse, match=f"process {proc.pid}"):
    classification_experiment.evaluate(config)
  with pytest.raises(lock.RunFolderInUse, match=f"process {proc.pid}"):
    export.export_checkpoint(str(folder), str(folder.parent / "models"))
  assert not os.path.exists(folder.parent / "models")
  # When the holder ends, its lock goes with it.
  proc.stdin.close()
  proc.wait(timeout=30)
  assert not os.path.exists(folder / ".lock")
  with lock.RunLock(str(folder), "training"):
    assert os.path.exists(folder / ".lock")


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(holder, capsys):
  folder, proc = holder
  proc.send_signal(signal.SIGKILL)  # kill -9: the lock file stays
  proc.wait(timeout=30)
  assert os.path.exists(folder / ".lock")
  with lock.RunLock(str(folder), "training"):
    pass
  warning = capsys.readouterr().err
  assert warning.startswith(f"Warning: taking over the lock of {str(folder)!r} left by process "
                            f"{proc.pid} on {socket.gethostname()} (training, started ")
  assert warning.rstrip().endswith("which is no longer running.")
  assert not os.path.exists(folder / ".lock")


def test_the_lock_is_reentrant_and_needs_no_folder_it_would_not_write(tmp_path):
  folder = str(tmp_path / "run")
  outer = lock.RunLock(folder, "training")
  with outer:
    with lock.RunLock(folder, "evaluation on test"):  # train() calls evaluate()
      pass
    assert os.path.exists(os.path.join(folder, ".lock"))  # still held by the outer one
  assert not os.path.exists(os.path.join(folder, ".lock"))
  missing = str(tmp_path / "missing")
  with lock.RunLock(missing, "export", create=False):
    assert not os.path.exists(missing)  # nothing created for a folder that is not there
