"""leo_tf.data.tfds_embeddings: build from pickles offline, read back identically."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from leo_tf.data import embeddings as emb
from leo_tf.data import synthetic
from leo_tf.data import tfds_embeddings
from leo_tf.core.config import DataConfig

# D must be 640, the builder's feature size; few classes and images keep it fast.
TINY = synthetic.SyntheticConfig(
    seed=1, num_train_classes=5, num_val_classes=5, num_test_classes=6, images_per_class=7,
    signal_dim=4, nuisance_dim=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(manual_dir, data_dir, builder) with synthetic_center prepared from tiny pickles."""
  root = tmp_path_factory.mktemp("tfds")
  manual_dir, data_dir = str(root / "embeddings"), str(root / "tensorflow_datasets")
  synthetic.generate(TINY, manual_dir, num_eval_tasks=2)
  builder = tfds_embeddings.LeoEmbeddings(config="synthetic_center", data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return manual_dir, data_dir, builder


def _assert_same_split(got, want):
  np.testing.assert_array_equal(got.embeddings, want.embeddings)  # same normalisation, exactly
  assert got.class_names == want.class_names
  np.testing.assert_array_equal(got.class_image_indices, want.class_image_indices)
  np.testing.assert_array_equal(got.class_sizes, want.class_sizes)
  assert got.image_names == want.image_names


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_builder_split_equals_pickle_split(prepared, split):
  manual_dir, _, builder = prepared
  want = emb.load_split(DataConfig(data_path=manual_dir, dataset_name="synthetic"), split)
  got = tfds_embeddings.load_split_from_tfds(builder, split)
  _assert_same_split(got, want)
  assert got.paths == (f"tfds:leo_embeddings/synthetic_center/1.0.0/{split}",)
  assert builder.info.splits[split].num_examples == want.num_images


def test_tfds_load_dataset_in_any_order_equals_pickle_split(prepared):
  manual_dir, data_dir, _ = prepared
  dataset = tfds.load("leo_embeddings/synthetic_center", split="test", data_dir=data_dir,
                      download=False)
  example = next(iter(tfds.as_numpy(dataset)))
  assert example["embedding"].shape == (640,) and example["embedding"].dtype == np.float32
  assert example["key"] == b"test-s00000010-s00000010_1.JPEG"
  assert (example["class_name"], example["image_name"], example["index"]) == (
      b"s00000010", b"s00000010_1.JPEG", 0)
  want = emb.load_split(DataConfig(data_path=manual_dir, dataset_name="synthetic"), "test")
  shuffled = dataset.shuffle(100, seed=0)
  _assert_same_split(tfds_embeddings.load_split_from_tfds(shuffled), want)
  with pytest.raises(ValueError, match=r"not 0\.\.40 once each"):  # 42 images, one dropped
    tfds_embeddings.load_split_from_tfds(dataset.filter(lambda x: x["index"] != 2))


def test_configs_and_missing_manual_dir(tmp_path):
  configs = {c.name: (c.dataset_name, c.embedding_crop) for c in
             tfds_embeddings.LeoEmbeddings.BUILDER_CONFIGS}
  assert configs == {"mini_center": ("miniImageNet", "center"),
                     "mini_multiview": ("miniImageNet", "multiview"),
                     "tiered_center": ("tieredImageNet", "center"),
                     "synthetic_center": ("synthetic", "center")}
  builder = tfds_embeddings.LeoEmbeddings(config="mini_center", data_dir=str(tmp_path / "d"))
  (tmp_path / "manual" / "tieredImageNet").mkdir(parents=True)  # not what mini_center needs
  with pytest.raises(emb.EmbeddingsError, match="miniImageNet/center/train_embeddings.pkl"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
