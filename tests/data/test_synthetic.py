"""leo_tf.data.synthetic: a deterministic dataset in the published format."""

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from leo_tf.data import embeddings as emb
from leo_tf.data import synthetic
from leo_tf.core.config import DataConfig
from tests.paths import REPO

TINY = synthetic.SyntheticConfig(
    seed=3, num_train_classes=6, num_val_classes=5, num_test_classes=7, images_per_class=20,
    embedding_dim=64, signal_dim=8, nuisance_dim=8, class_separation=4.0, nuisance_scale=2.0,
    noise_scale=0.3)


def _read_all(folder):
  return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_same_settings_give_byte_identical_files(tmp_path):
  synthetic.generate(TINY, str(tmp_path / "a"), num_eval_tasks=20)
  synthetic.generate(TINY, str(tmp_path / "b"), num_eval_tasks=20)
  a = _read_all(synthetic.output_folder(str(tmp_path / "a")))
  b = _read_all(synthetic.output_folder(str(tmp_path / "b")))
  assert sorted(a) == ["synthetic_info.json", "test_embeddings.pkl", "train_embeddings.pkl",
                       "val_embeddings.pkl"]
  assert a == b
  synthetic.generate(dataclasses_replace(TINY, seed=4), str(tmp_path / "c"), num_eval_tasks=20)
  c = _read_all(synthetic.output_folder(str(tmp_path / "c")))
  assert c["train_embeddings.pkl"] != a["train_embeddings.pkl"]


def dataclasses_replace(config, **changes):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(config, **changes)


def test_files_load_like_published_ones_with_published_keys(tmp_path):
  synthetic.generate(TINY, str(tmp_path), num_eval_tasks=20)
  config = DataConfig(data_path=str(tmp_path), dataset_name="synthetic")
  splits = {s: emb.load_split(config, s, embedding_dim=64) for s in ("train", "val", "test")}
  assert [splits[s].num_classes for s in ("train", "val", "test")] == [6, 5, 7]
  assert splits["train"].class_names[:2] == ("s00000000", "s00000001")
  assert splits["val"].class_names[0] == "s00000006"  # ids continue across splits
  assert splits["test"].class_names[-1] == "s00000017"
  np.testing.assert_array_equal(splits["test"].class_sizes, [20] * 7)
  np.testing.assert_array_equal(splits["train"].class_image_indices[1], np.arange(20, 40))
  assert splits["val"].image_names[:2] == ("s00000006_1.JPEG", "s00000006_2.JPEG")

  path = emb.split_path(str(tmp_path), "synthetic", "center", "train")
  with open(path, "rb") as f:
    raw = pickle.load(f, encoding="latin1")
  assert sorted(raw) == ["embeddings", "keys", "labels"]
  assert raw["embeddings"].dtype == np.float32 and raw["embeddings"].shape == (120, 64)
  assert raw["embeddings"].min() >= 0.0  # softplus features
  assert raw["keys"].dtype == np.dtype("S33")  # "train-s00000000-s00000000_20.JPEG"
  keys = [k.decode() for k in raw["keys"].tolist()]
  assert all(re.fullmatch(r"train-(s\d{8})-\1_\d{1,2}\.JPEG", k) for k in keys)
  assert keys[0] == "train-s00000000-s00000000_1.JPEG"  # NUL-padded to 33 bytes
  assert raw["keys"].tobytes()[:33].endswith(b"\x00")
  np.testing.assert_array_equal(raw["labels"], np.repeat(np.arange(6), 20))


def test_info_reports_ncm_between_chance_and_one(tmp_path):
  info = synthetic.generate(TINY, str(tmp_path), num_eval_tasks=200)
  with open(os.path.join(synthetic.output_folder(str(tmp_path)), "synthetic_info.json")) as f:
    written = json.load(f)
  assert written["settings"]["class_separation"] == 4.0
  assert written["settings"]["num_eval_tasks"] == 200
  assert written["ncm"] == info["ncm"]
  for name in ("5way_1shot", "5way_5shot"):
    accuracy = written["ncm"][name]["accuracy"]
    assert 0.25 < accuracy < 0.99
    assert 0.0 < written["ncm"][name]["ci95"] < 0.05
  # More shots help, and removing the nuisance helps more.
  assert written["ncm"]["5way_5shot"]["accuracy"] > written["ncm"]["5way_1shot"]["accuracy"]
  assert (written["ncm_nuisance_removed"]["5way_1shot"]["accuracy"]
          > written["ncm"]["5way_1shot"]["accuracy"] + 0.1)


def test_regeneration_is_skipped_unless_settings_change_or_overwrite(tmp_path):
  folder = synthetic.output_folder(str(tmp_path))
  first = synthetic.generate(TINY, str(tmp_path), num_eval_tasks=20)
  assert not first["skipped"]
  stamp = os.stat(os.path.join(folder, "train_embeddings.pkl")).st_mtime_ns
  again = synthetic.generate(TINY, str(tmp_path), num_eval_tasks=20)
  assert again["skipped"] and again["ncm"] == first["ncm"]
  assert os.stat(os.path.join(folder, "train_embeddings.pkl")).st_mtime_ns == stamp
  assert not synthetic.generate(TINY, str(tmp_path), num_eval_tasks=20, overwrite=True)["skipped"]
  changed = synthetic.generate(dataclasses_replace(TINY, class_separation=5.0), str(tmp_path),
                               num_eval_tasks=20)
  assert not changed["skipped"] and changed["settings"]["class_separation"] == 5.0


def _ncm_1shot(separation):
  config = dataclasses_replace(TINY, class_separation=separation, num_test_classes=10,
                               images_per_class=40)
  x, keys, _ = synthetic.generate_split(config, "test")
  names = [k.rsplit("-", 2)[1] for k in keys]
  images = [k.rsplit("-", 2)[2] for k in keys]
  split = emb.build_split(x, names, images, ("<test>",))
  return synthetic.ncm_accuracy(split, num_shots=1, num_tasks=600)


def test_separation_moves_ncm_accuracy_monotonically_from_chance():
  accuracies = [_ncm_1shot(s)[0] for s in (0.0, 3.0, 6.0, 12.0)]
  chance, interval = _ncm_1shot(0.0)
  assert abs(chance - 0.2) < max(2 * interval, 0.02)
  assert accuracies[0] < accuracies[1] < accuracies[2] < accuracies[3]
  assert accuracies[3] > 0.8


def test_bad_settings_are_value_errors():
  with pytest.raises(ValueError, match="must not exceed embedding_dim"):
    synthetic.SyntheticConfig(embedding_dim=16, signal_dim=8, nuisance_dim=9)
  with pytest.raises(ValueError, match="class_separation must be >= 0"):
    synthetic.SyntheticConfig(class_separation=-1.0)


def test_command_line_entry_point(tmp_path):
  command = [sys.executable, "-m", "leo_tf.data.synthetic", f"--output_path={tmp_path}",
             "--num_train_classes=5", "--num_val_classes=5", "--num_test_classes=5",
             "--images_per_class=20", "--embedding_dim=32", "--signal_dim=4",
             "--nuisance_dim=4", "--num_eval_tasks=10"]
  result = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert "NCM 5way_1shot on test (10 tasks)" in result.stdout
  split = emb.load_split(DataConfig(data_path=str(tmp_path), dataset_name="synthetic"), "val",
                         embedding_dim=32)
  assert split.num_classes == 5 and split.num_images == 100
  folder = os.path.join(str(tmp_path), "synthetic", "center")
  lines = result.stdout.splitlines()
  assert lines[0].startswith("Generated in ")
  assert lines[-1] == (f"Wrote {folder}; use data_path={tmp_path} dataset_name=synthetic "
                       "embedding_dim=32.")

  # The same command again keeps the files, and its last line says so (no "Wrote").
  again = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
  assert again.returncode == 0, again.stderr
  lines = again.stdout.splitlines()
  assert lines[0] == ("Files exist with the same settings: not regenerated (pass --overwrite "
                      "to force).")
  assert lines[-1] == (f"Kept {folder} (already generated with these settings); use "
                       f"data_path={tmp_path} dataset_name=synthetic embedding_dim=32.")
  assert "Wrote" not in again.stdout


def test_where_line_names_embedding_dim_only_when_not_640():
  info = {"settings": {"embedding_dim": 640}, "skipped": False}
  assert synthetic.where_line(info, "data/embeddings") == (
      "Wrote data/embeddings/synthetic/center; use data_path=data/embeddings "
      "dataset_name=synthetic.")
  assert synthetic.where_line(dict(info, skipped=True), "data/embeddings") == (
      "Kept data/embeddings/synthetic/center (already generated with these settings); use "
      "data_path=data/embeddings dataset_name=synthetic.")
