"""Tests for leo_tf.images.pretrain: stage 1's pieces and its command on real Omniglot drawings."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core.config import DataConfig
from leo_tf.data import embeddings
from leo_tf.images import backbones
from leo_tf.images import omniglot
from leo_tf.images import pretrain
from tests.paths import REPO

DATA = os.path.join(REPO, "..", "shared", "data", "omniglot")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "index.csv")),
                                reason="the shared Omniglot folder is not here")


def test_random_shift_moves_each_image_by_its_offset():
  # One ink pixel at the centre of 3x3 images; padding by 1 and cropping at
  # offset (oy, ox) moves it from (1, 1) to (2 - oy, 2 - ox).
  images = np.zeros((40, 3, 3, 1), np.float32)
  images[:, 1, 1, 0] = 1.0
  out = pretrain.random_shift(images, 1, np.random.default_rng(5))
  offsets = np.random.default_rng(5).integers(0, 3, size=(40, 2))
  for b in range(40):
    expected = np.zeros((3, 3), np.float32)
    expected[2 - offsets[b, 0], 2 - offsets[b, 1]] = 1.0
    np.testing.assert_array_equal(out[b, :, :, 0], expected)
  assert len({tuple(o) for o in offsets}) > 5  # the offsets do vary
  np.testing.assert_array_equal(pretrain.random_shift(images, 0, np.random.default_rng(0)), images)



def test_cosine_head_by_hand():
  config = pretrain.PretrainConfig(head="cosine", cosine_scale_init=10.0)
  variables, logits_fn = pretrain._build_head(2, 2, config)  # pylint: disable=protected-access
  variables[0].assign([[3.0, 0.0], [4.0, -2.0]])  # columns (3, 4) and (0, -2)
  # f = (6, 8) -> cos with (3, 4) is 1, with (0, -2) is -0.8.
  np.testing.assert_allclose(logits_fn(tf.constant([[6.0, 8.0]])).numpy(), [[10.0, -8.0]],
                             rtol=1e-6)



def test_ncm_eval_on_separable_features():
  keys = [f"s-c{c}-c{c}_{i}.png" for c in range(4) for i in range(5)]
  features = np.repeat(np.eye(4, 6, dtype=np.float32), 5, axis=0)  # [20, 6], class c -> e_c
  features += 0.01 * np.random.default_rng(0).standard_normal(features.shape).astype(np.float32)
  split = pretrain.ImageSplit(images=np.zeros((20, 1, 1, 1), np.float32),
                              labels=np.repeat(np.arange(4), 5), keys=tuple(keys), num_classes=4)
  mean, half = pretrain.ncm_eval(features, split, num_classes=3, num_shots=1, num_tasks=20, seed=0)
  assert mean == 1.0 and half == 0.0
  features[:] = 1.0  # indistinguishable: every query ties and goes to class 0 -> 1/3
  mean, _ = pretrain.ncm_eval(features, split, num_classes=3, num_shots=1, num_tasks=20, seed=0)
  np.testing.assert_allclose(mean, 1 / 3)



def _image_folder(root, num_classes=3, per_class=6, size=32):
  """<root>/{train,val,test}/<class>/<i>.png: colour images, one hue per class."""
  rng = np.random.default_rng(0)
  for s, split in enumerate(("train", "val", "test")):
    for c in range(num_classes):
      folder = os.path.join(root, split, f"n{s}{c:07d}")
      os.makedirs(folder)
      for i in range(per_class):
        image = rng.integers(0, 60, size=(size, size, 3))
        image[:, :, c % 3] += 150
        tf.io.write_file(os.path.join(folder, f"img-{i}.png"),
                         tf.io.encode_png(image.astype(np.uint8)))



def test_wide_resnet_at_reduced_size_from_an_image_folder(tmp_path):
  _image_folder(str(tmp_path / "images"))
  backbone = backbones.BackboneConfig(name="wide_resnet", image_size=32, image_channels=3,
                                      wrn_depth=10, wrn_width=1)
  config = pretrain.PretrainConfig(
      image_dir=str(tmp_path / "images"), output_path=str(tmp_path / "out"),
      dataset_name="tinyimages", backbone=backbone, epochs=1, batch_size=8, eval_num_classes=3,
      num_eval_tasks=5, augment_shift=2, progress=False)
  info = pretrain.pretrain(config)
  assert info["embedding_dim"] == 64 and info["num_images"] == {"train": 18, "val": 18,
                                                                  "test": 18}
  split = embeddings.load_split(DataConfig(data_path=str(tmp_path / "out"),
                                           dataset_name="tinyimages"), "test", embedding_dim=64)
  assert split.class_names == ("n20000000", "n20000001", "n20000002")
  assert split.image_names[0] == "n20000000_img_0.png"  # '-' in file names replaced
  np.testing.assert_allclose(np.linalg.norm(split.embeddings, axis=1), 1.0, rtol=1e-5)
  assert os.path.isfile(tmp_path / "out" / "tinyimages" / pretrain.WEIGHTS_FILE)
  assert info["feature_layers"] == "final"  # WRN-10 (the paper chose layer 21 of WRN-28 only)

  # The same trained backbone, embedded from an earlier layer without training again.
  earlier = dataclasses.replace(
      config, dataset_name="tinyimages_layer5", backbone_from=str(tmp_path / "out" / "tinyimages"),
      backbone=dataclasses.replace(backbone, feature_layers="layer5"))
  again = pretrain.pretrain(earlier)
  assert again["feature_layers"] == "layer5" and again["embedding_dim"] == 32
  assert again["best_epoch"] == info["best_epoch"] and again["history"] == info["history"]
  features, preprocess, record = pretrain.load_embedding_function(
      str(tmp_path / "out" / "tinyimages_layer5"))
  assert record["feature_layers"] == "layer5" and record["embedding_dim"] == 32
  data = embeddings.read_embeddings_file(
      str(tmp_path / "out" / "tinyimages_layer5" / "center" / "test_embeddings.pkl"), 32)
  test_images = pretrain.folder_splits(config)["test"].images
  np.testing.assert_allclose(data.embeddings, features(test_images, training=False).numpy(),
                             rtol=1e-4, atol=1e-5)



@needs_data
def test_pretrain_command_writes_omniglot_embeddings(tmp_path):
  out = tmp_path / "emb"
  result = subprocess.run(
      [sys.executable, "-m", "leo_tf.images.pretrain", f"--data_dir={DATA}", f"--output_path={out}",
       "--max_classes=8", "--epochs=1", "--conv4_channels=8,8,8,8", "--num_eval_tasks=10",
       "--eval_num_classes=5", "--batch_size=32"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "stage 1 epoch 1/1" in result.stderr  # progress lines
  with open(out / "omniglot" / pretrain.INFO_FILE) as f:
    info = json.load(f)
  assert info["embedding_dim"] == 8 and info["num_classes"] == {"train": 8, "val": 8, "test": 8}
  for split in ("train", "val", "test"):
    data = embeddings.read_embeddings_file(
        str(out / "omniglot" / "center" / f"{split}_embeddings.pkl"), embedding_dim=8)
    assert data.num_examples == 160
    assert data.keys[0].startswith(f"omniglot_{split}-char") and data.keys[0].endswith("_01.png")
  # Meta-test characters are not among the meta-training ones.
  train = embeddings.read_embeddings_file(str(out / "omniglot/center/train_embeddings.pkl"), 8)
  test = embeddings.read_embeddings_file(str(out / "omniglot/center/test_embeddings.pkl"), 8)
  assert not set(train.class_names) & set(test.class_names)



@needs_data
def test_heldout_alphabets_train_the_backbone_on_the_other_alphabets(tmp_path, monkeypatch):
  seen = {}
  real_train_backbone = pretrain.train_backbone

  def recording_train_backbone(config, train, val, log):
    seen["train_keys"] = set(train.keys)
    return real_train_backbone(config, train, val, log)

  monkeypatch.setattr(pretrain, "train_backbone", recording_train_backbone)
  config = pretrain.PretrainConfig(
      data_dir=DATA, output_path=str(tmp_path / "emb"), max_classes=12, max_eval_classes=6,
      heldout_alphabets=4, epochs=1, num_eval_tasks=5, eval_num_classes=5, batch_size=32,
      backbone=backbones.BackboneConfig(conv4_channels=(8, 8, 8, 8)), progress=False)
  info = pretrain.pretrain(config)
  # 12 evenly spaced training classes; the 4 held-out alphabets' classes are embedded as
  # "train", the others' trained the backbone, and no class is on both sides.
  names = pretrain.heldout_alphabet_names(config)
  assert info["heldout_alphabets"] == names and len(names) == 4
  lines = omniglot.evenly_spaced(omniglot.read_split_file(DATA, "train"), 12)
  heldout_lines = [l for l in lines if l.split("/")[0] in names]
  assert info["num_classes"] == {"train": len(heldout_lines),
                                 "backbone_train": 12 - len(heldout_lines), "val": 6, "test": 6}
  train = embeddings.read_embeddings_file(
      str(tmp_path / "emb" / "omniglot" / "center" / "train_embeddings.pkl"), embedding_dim=8)
  assert train.num_examples == 20 * len(heldout_lines)
  trained_on = {k.split("-")[1] for k in seen["train_keys"]}
  assert len(trained_on) == 12 - len(heldout_lines)
  assert not trained_on & set(train.class_names)
  # Embedding another layer with that backbone keeps the held-out classes, or is refused.
  with pytest.raises(ValueError, match="trained with heldout_alphabets=4.*--heldout_alphabets=4"):
    pretrain.pretrain(dataclasses.replace(
        config, backbone_from=str(tmp_path / "emb" / "omniglot"), heldout_alphabets=0,
        dataset_name="other"))


def test_heldout_alphabets_refusals():
  with pytest.raises(ValueError, match="heldout_alphabets must be >= 0"):
    pretrain.PretrainConfig(heldout_alphabets=-1)
  with pytest.raises(ValueError, match="with image_dir, split the class folders yourself"):
    pretrain.PretrainConfig(heldout_alphabets=2, image_dir="/tmp/x")
