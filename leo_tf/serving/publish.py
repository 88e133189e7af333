"""Model versions under a TF Serving base path, published atomically.

TF Serving watches a model base path and loads its folders named by an
integer (the versions). A version is written as `<export_dir>/.tmp-<version>-<pid>`
(a name TF Serving ignores), flushed to disk and renamed to `<version>` when
complete, so a server never sees half an export. A checkpoint is identified
by the SHA-256 of its files; publishing one that a version already holds is
refused unless asked for.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from typing import Any, Callable

from leo_tf.data import atomic

EXTRA_DIR = "assets.extra"  # TF Serving reads only the warmup file from it
CONFIG_FILE = "leo_config.json"  # what was exported, from where, with which settings
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for


def versions(export_dir: str) -> list[int]:
  """The versions in a model base path: its folders named by an integer, sorted."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(name) for name in os.listdir(export_dir)
                if re.fullmatch(r"[0-9]+", name) and os.path.isdir(os.path.join(export_dir, name)))


def read_export_config(version_dir: str) -> dict[str, Any]:
  """The leo_config.json written beside a SavedModel."""
  with open(os.path.join(version_dir, EXTRA_DIR, CONFIG_FILE)) as f:
    return json.load(f)


def checkpoint_sha256(prefix: str) -> str:
  """SHA-256 of a checkpoint's files (<prefix>.index and <prefix>.data-*), in name order.

  Only the contents and the suffixes after the prefix count, so a copied or
  renamed checkpoint has the same digest.
  """
  files = sorted(glob.glob(glob.escape(prefix) + ".data-*"))
  index = prefix + ".index"
  if not os.path.isfile(index) or not files:
    raise FileNotFoundError(
        f"No checkpoint at {prefix!r} ({index} or its .data-* files are missing); pass the "
        "prefix that tf.train.Checkpoint wrote, e.g. runs/leo/best/ckpt-1000.")
  digest = hashlib.sha256()
  for path in [index, *files]:
    digest.update(path[len(prefix):].encode("utf-8") + b"\0")  # ".index", ".data-..."
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def check_not_published(export_dir: str, sha256: str, prefix: str) -> None:
  """Raises FileExistsError if a version in export_dir already holds checkpoint `sha256`."""
  for version in versions(export_dir):
    version_dir = os.path.join(export_dir, str(version))
    try:
      held = read_export_config(version_dir)["source"]["sha256"]
    except (OSError, ValueError, KeyError):
      continue  # not one of ours, or not readable: it cannot hold this checkpoint
    if held == sha256:
      raise FileExistsError(
          f"Version {version} ({version_dir}) already holds checkpoint {prefix} (sha256 "
          f"{sha256[:12]}...); it is not exported again. Pass --allow_duplicate "
          "(allow_duplicate=True) to write it as a new version anyway.")


def publish(export_dir: str, write_version: Callable[[str, int], None]) -> str:
  """Writes the next version under `export_dir` atomically; returns <export_dir>/<version>.

  Args:
    export_dir: the model base path (created if missing).
    write_version: (folder, version) -> None fills the version's folder (a
      temporary one, renamed into place when write_version returns).

  Raises:
    FileExistsError: another process published the same version meanwhile.
    OSError: the file system refused a write (e.g. ENOSPC; atomic.write_failure),
      naming the version and saying that nothing was published.
    Whatever else write_version raises; the temporary folder is removed first.
  """
  os.makedirs(export_dir, exist_ok=True)
  existing = versions(export_dir)
  version = existing[-1] + 1 if existing else 1
  final_dir = os.path.join(export_dir, str(version))
  tmp_dir = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
  if os.path.exists(tmp_dir):
    shutil.rmtree(tmp_dir)  # left by a crashed export of this same pid number
  try:
    write_version(tmp_dir, version)
    atomic.fsync_tree(tmp_dir)
    if os.path.exists(final_dir):
      raise FileExistsError(
          f"Version {version} appeared in {export_dir!r} during this export (another export "
          "running?); run the export again to write the next version.")
    os.rename(tmp_dir, final_dir)
  except BaseException as e:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    failure = None if isinstance(e, FileExistsError) else atomic.write_failure(e)
    if failure is not None:  # a full disk, a quota, ... (OSError or TensorFlow's error)
      raise atomic.refused_write_error(
          failure[0], f"could not write version {version} of {export_dir} ({failure[1]}); "
          f"nothing was published and no partial folder is left (versions {existing or 'none'} "
          "are as they were). Free space and export again.") from e
    raise
  atomic.fsync_dir(export_dir)
  return final_dir
