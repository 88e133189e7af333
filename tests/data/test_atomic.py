"""leo_tf.data.atomic: a reader sees the old file or the whole new one, never a part.

Through write_split (the embeddings' writer, an atomic_write) interrupted midway,
and through atomic_write, write_json_atomically, fsync_dir and fsync_tree directly.
"""

import json
import os

import numpy as np
import pytest

from leo_tf.data import atomic
from leo_tf.data import embeddings as emb

D = 640


def test_interrupted_write_leaves_old_file_intact_and_no_partial_pkl(tmp_path, monkeypatch):
  path = str(tmp_path / "train_embeddings.pkl")
  emb.write_split(path, np.ones((2, D)), ["tr-1-na-na_0.JPEG", "tr-1-nb-nb_1.JPEG"], [0, 1])
  with open(path, "rb") as f:
    before = f.read()

  def crash_midway(self, obj):
    self.write(b"\x80\x02}q\x00(U\nembeddings")  # a partial pickle...
    raise KeyboardInterrupt("killed while writing")  # ...then the process is stopped

  monkeypatch.setattr(emb._Python2StylePickler, "dump", crash_midway)
  with pytest.raises(KeyboardInterrupt):
    emb.write_split(path, 3 * np.ones((4, D)), ["tr-1-na-na_0.JPEG", "tr-1-nb-nb_1.JPEG",
                                                "tr-1-nc-nc_2.JPEG", "tr-1-nd-nd_3.JPEG"],
                    [0, 1, 2, 3])
  with open(path, "rb") as f:
    assert f.read() == before
  assert os.listdir(tmp_path) == ["train_embeddings.pkl"]  # temporary file removed
  with pytest.raises(KeyboardInterrupt):
    emb.write_split(str(tmp_path / "val_embeddings.pkl"), np.ones((1, D)), ["x-na-na_1"], [0])
  assert not (tmp_path / "val_embeddings.pkl").exists()


def test_atomic_write_replaces_whole_files_and_cleans_up_after_a_failure(tmp_path):
  path = str(tmp_path / "new" / "folder" / "results.txt")  # missing folders are made
  atomic.atomic_write(path, lambda f: f.write(b"old"))
  atomic.atomic_write(path, lambda f: f.write(b"new contents"))
  with open(path, "rb") as f:
    assert f.read() == b"new contents"

  def fail(f):
    f.write(b"half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    atomic.atomic_write(path, fail)
  with open(path, "rb") as f:
    assert f.read() == b"new contents"
  assert os.listdir(os.path.dirname(path)) == ["results.txt"]


def test_write_json_atomically_writes_sorted_indented_json_with_the_umasks_mode(tmp_path):
  path = str(tmp_path / "config.json")
  previous = os.umask(0o027)
  try:
    atomic.write_json_atomically(path, {"b": 1, "a": [1, 2]})
  finally:
    os.umask(previous)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
  assert json.loads(text) == {"a": [1, 2], "b": 1}
  assert os.stat(path).st_mode & 0o777 == 0o640  # 0666 & ~umask, not mkstemp's 0600


def test_fsync_tree_flushes_every_file_and_folder(tmp_path, monkeypatch):
  tree = tmp_path / "version"
  (tree / "variables").mkdir(parents=True)
  (tree / "saved_model.pb").write_bytes(b"graph")
  (tree / "variables" / "variables.index").write_bytes(b"index")
  want = {os.stat(p).st_ino for p in (tree, tree / "variables", tree / "saved_model.pb",
                                      tree / "variables" / "variables.index")}
  flushed = []
  real_fsync = os.fsync

  def recording_fsync(fd):
    flushed.append(os.fstat(fd).st_ino)
    real_fsync(fd)

  monkeypatch.setattr(os, "fsync", recording_fsync)
  atomic.fsync_tree(str(tree))
  assert sorted(flushed) == sorted(want)  # each once
  atomic.fsync_dir(str(tmp_path / "missing"))  # a folder that cannot be opened: no error
