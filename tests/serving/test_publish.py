"""serving.publish: versions are the integer folders, a checkpoint is known by the SHA-256 of
its contents, an interrupted export leaves no version, and exporting again never overwrites.
"""

import glob
import hashlib
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.data import atomic
from leo_tf.serving import export
from leo_tf.serving import publish
from leo_tf.serving import savedmodel
from tests.serving.helpers import call, task, trained_run


def test_versions_are_the_integer_folders(tmp_path):
  assert publish.versions(str(tmp_path / "missing")) == []
  for name in ("1", "10", "2", ".tmp-3-123", "abc", "4b"):
    os.makedirs(tmp_path / name)
  (tmp_path / "5").write_text("a file, not a version")
  assert publish.versions(str(tmp_path)) == [1, 2, 10]


def _copy_checkpoint(prefix, copy):
  os.makedirs(os.path.dirname(copy), exist_ok=True)
  for path in [prefix + ".index", *glob.glob(prefix + ".data-*")]:
    shutil.copy(path, copy + path[len(prefix):])


def test_checkpoint_sha256_is_of_the_contents(exported, tmp_path):
  digest = publish.checkpoint_sha256(exported.prefix)
  assert len(digest) == 64 and int(digest, 16) >= 0
  copy = str(tmp_path / "elsewhere" / "renamed")
  _copy_checkpoint(exported.prefix, copy)
  assert publish.checkpoint_sha256(copy) == digest  # another name, the same contents
  with open(copy + ".index", "ab") as f:
    f.write(b"\0")
  assert publish.checkpoint_sha256(copy) != digest
  with pytest.raises(FileNotFoundError, match="No checkpoint at"):
    publish.checkpoint_sha256(str(tmp_path / "nothing" / "ckpt-1"))


def _tree_digest(folder):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      digest.update(os.path.relpath(os.path.join(root, name), folder).encode())
      with open(os.path.join(root, name), "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.mark.parametrize("where", ["warmup", "flush"])
def test_interrupted_export_leaves_no_version(exported, tmp_path, monkeypatch, where):
  base = str(tmp_path / "leo")
  seen = {}

  def interrupt_warmup(path, logs):
    del logs
    version_tmp = os.path.dirname(os.path.dirname(path))  # <tmp>/assets.extra/<file>
    seen["name"] = os.path.basename(version_tmp)
    seen["files"] = sorted(os.listdir(version_tmp))
    raise RuntimeError("interrupted while writing the warmup requests")

  def interrupt_flush(folder):
    seen["name"] = os.path.basename(folder)
    seen["files"] = sorted(os.listdir(folder))
    raise RuntimeError("interrupted while flushing the version to disk")

  if where == "warmup":  # inside write_version, after the SavedModel is written
    monkeypatch.setattr(savedmodel, "write_warmup", interrupt_warmup)
  else:  # after write_version, before the rename
    monkeypatch.setattr(atomic, "fsync_tree", interrupt_flush)
  with pytest.raises(RuntimeError, match="interrupted"):
    export.export_checkpoint(exported.run_dir, base)
  assert seen["name"] == f".tmp-1-{os.getpid()}"  # not a name TF Serving loads
  assert "saved_model.pb" in seen["files"] and "variables" in seen["files"]
  assert os.listdir(base) == []  # no version, and the temporary folder is gone
  assert publish.versions(base) == []


def test_exporting_again_never_overwrites(exported, tmp_path):
  base = str(tmp_path / "leo")
  shutil.copytree(exported.version_dir, os.path.join(base, "1"))
  # What a killed export leaves: a hidden folder, which is no version.
  os.makedirs(os.path.join(base, ".tmp-2-999999", "variables"))
  with open(os.path.join(base, ".tmp-2-999999", "saved_model.pb"), "wb") as f:
    f.write(b"partial")
  before = _tree_digest(os.path.join(base, "1"))

  with pytest.raises(FileExistsError, match=r"Version 1 .* already holds checkpoint"):
    export.export_checkpoint(exported.run_dir, base)
  # A copy under another name is the same checkpoint (same contents).
  copy = os.path.join(exported.run_dir, "copy", "renamed")
  _copy_checkpoint(exported.prefix, copy)
  with pytest.raises(FileExistsError, match=r"Version 1 .* already holds checkpoint"):
    export.export_checkpoint(exported.run_dir, base, checkpoint=copy)
  assert publish.versions(base) == [1]

  # Another checkpoint of the run, named explicitly, becomes version 2.
  run = trained_run(exported.config, seed=1)
  run.step.assign(9)
  other = run.checkpoint.write(os.path.join(exported.run_dir, "other", "ckpt-9"))
  version_dir = export.export_checkpoint(exported.run_dir, base, checkpoint=other)
  assert version_dir == os.path.join(base, "2")
  assert publish.versions(base) == [1, 2]
  record = publish.read_export_config(version_dir)
  assert record["source"]["step"] == 9
  assert record["source"]["sha256"] != publish.read_export_config(
      os.path.join(base, "1"))["source"]["sha256"]
  assert _tree_digest(os.path.join(base, "1")) == before

  support, query = task(3, 1, 4, seed=15)
  version_2 = tf.saved_model.load(version_dir)
  old, new = (call(m, "serving_default", support, query) for m in (exported.loaded, version_2))
  assert np.abs(old["probabilities"] - new["probabilities"]).max() > 1e-3  # new weights
