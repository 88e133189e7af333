"""One writer per run folder: a lock file naming the process that holds it.

Two trainings into one --checkpoint_path write the same checkpoints and two
event files per summary folder; an export or an evaluation that runs while
a training rewrites the best checkpoint can read half of it. So training,
evaluating into and exporting from a run folder hold <folder>/.lock, created
exclusively (O_EXCL) with the holder's process id, host, start time and job.
A second process is refused at start with a message naming the first; a lock
whose process is gone (same host, no such process) is taken over with a
warning. A folder this process cannot write needs no lock (no one writes into
it). The lock is re-entrant within a process (train holds it and calls
evaluate) and is removed when the last holder releases it; a process killed
with kill -9 leaves it behind, for the next start to take over.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time

LOCK_FILE = ".lock"
_HELD: dict[str, int] = {}  # lock path -> how many times this process holds it


class RunFolderInUse(RuntimeError):
  """Another live process holds the run folder's lock."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: alive
    return True
  return True


def _read(path: str) -> dict | None:
  """The holder's record; None while it is being written (or unreadable)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


class RunLock:
  """`with RunLock(folder, "training"):` holds folder/.lock for the block."""

  def __init__(self, folder: str, job: str, create: bool = True):
    """create: make the folder if missing (training); False: a missing folder needs no lock."""
    self.folder, self.job, self.create = folder, job, create
    self.path = os.path.abspath(os.path.join(folder, LOCK_FILE))

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, or raises RunFolderInUse naming the process that holds it."""
    if _HELD.get(self.path):
      _HELD[self.path] += 1
      return
    missing = not os.path.isdir(self.folder)
    if (missing and not self.create) or (not missing and not os.access(self.folder, os.W_OK)):
      _HELD[self.path] = 1  # no folder, or a read-only one: nobody can be writing into it
      return
    os.makedirs(self.folder, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "job": self.job,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    for attempt in range(50):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(self.path)
        if holder is None:  # being written by its holder, or torn: look again
          if attempt < 20:
            time.sleep(0.05)
            continue
          holder = {}
        dead = (holder.get("host") == record["host"] and isinstance(holder.get("pid"), int)
                and not _alive(holder["pid"]))
        if dead or not holder:
          print(f"Warning: taking over the lock of {self.folder!r} left by "
                f"{_describe(holder)}, which is no longer running.", file=sys.stderr, flush=True)
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        raise RunFolderInUse(
            f"{self.folder!r} is in use by {_describe(holder)}; wait for it to end or stop it, "
            f"or use another --checkpoint_path. (If that process is gone, delete {self.path}.)"
        ) from None
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
      _HELD[self.path] = 1
      return
    raise RunFolderInUse(f"could not take the lock {self.path}: other processes keep taking "
                         "it; start one process per run folder.")

  def release(self) -> None:
    """Gives the lock back; the file goes with the last release."""
    count = _HELD.get(self.path, 0)
    if count > 1:
      _HELD[self.path] = count - 1
      return
    _HELD.pop(self.path, None)
    holder = _read(self.path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
      os.remove(self.path)


def _describe(holder: dict) -> str:
  if not holder:
    return "a process that left an unreadable lock file"
  return (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('job')}, started "
          f"{holder.get('started')})")
