"""Atomic file writing: a reader sees the old file or the whole new one, never a part.

Every file leo_tf writes for others to read (embeddings, results, run
configurations, best-checkpoint pointers, figures' data) goes through
atomic_write: a temporary file in the same folder, flushed and fsynced, then
renamed over the target. Folders (SavedModel versions) are written beside their
place, flushed with fsync_tree and renamed in one step (serving.publish).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile

# The system errors of a write that the file system refused: a full disk, a quota, a
# read-only or forbidden folder, a failing device, a file too large.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.EFBIG)


def fsync_dir(folder: str) -> None:
  """Flushes a folder's entries (a rename in it) to disk where the system allows."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:  # Some systems cannot open folders; the rename is still atomic.
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_failure(error: BaseException) -> tuple[int, str] | None:
  """(errno, the system's text) if `error` is a write the file system refused, else None.

  An OSError carries its errno; TensorFlow's writers (checkpoints, SavedModels,
  summaries) raise their own errors (ResourceExhaustedError for ENOSPC), whose
  message holds the system's text, e.g. "No space left on device".
  """
  if isinstance(error, OSError):
    if error.errno not in WRITE_ERRNOS:
      return None
    return error.errno, error.strerror or os.strerror(error.errno)
  text = str(error)
  for code in WRITE_ERRNOS:
    if os.strerror(code) in text:
      return code, os.strerror(code)
  return None


def refused_write_error(code: int, message: str) -> OSError:
  """An OSError with errno `code` whose text is `message` alone (no "[Errno N]" prefix)."""
  error = OSError(message)
  error.errno = code
  return error


def _current_umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write(path: str, write_fn) -> None:
  """Writes a file so that readers see either the old one or the complete new one.

  `write_fn(f)` writes to a temporary file in the same folder (named
  ".<name>.<random>.tmp", never matching *.pkl), which is flushed, fsynced and
  then renamed over `path` with os.replace. If write_fn raises, the temporary
  file is removed and `path` is left as it was. A hard crash can leave only a
  hidden .tmp file behind.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                  dir=folder)
  try:
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes it 0600
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  fsync_dir(folder)


def write_json_atomically(path: str, data: dict) -> None:
  """Writes `data` as JSON with atomic_write: readers never see a partial file."""
  text = json.dumps(data, indent=2, sort_keys=True) + "\n"
  atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def fsync_tree(folder: str) -> None:
  """Flushes every file and folder under `folder` to disk (before renaming it into place)."""
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        os.fsync(f.fileno())
    fsync_dir(root)
