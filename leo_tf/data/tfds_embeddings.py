"""A TensorFlow Datasets builder for the LEO embeddings, and a loader back to EmbeddingSplit.

The builder `leo_embeddings` (manual download) reads the published pickles
through embeddings.read_embeddings_file (the restricted unpickler and all its
checks) and stores one example per image:

  embedding:  float32 [640], as published (not normalised)
  key:        the published key "<anything>-<class>-<image_file>"
  class_name: <class>
  image_name: <image_file>
  index:      the row in the published file (examples keep file order)

load_split_from_tfds turns a prepared split back into an EmbeddingSplit through
embeddings.build_split, the same function load_split uses, so the episode
sampler gets identical contents (same class order, indices and normalisation)
from either source.

    builder = LeoEmbeddings(config="mini_center", data_dir=...)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="<folder holding miniImageNet/ and tieredImageNet/>"))
    split = load_split_from_tfds(builder, "train")
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from leo_tf.data import embeddings as emb
from leo_tf.data import synthetic


@dataclasses.dataclass(eq=False)
class LeoEmbeddingsConfig(tfds.core.BuilderConfig):
  """One dataset and crop of the embeddings (tfds BuilderConfigs are mutable dataclasses)."""

  dataset_name: str = "miniImageNet"  # folder under manual_dir
  embedding_crop: str = "center"  # center or multiview
  embedding_dim: int = emb.DEFAULT_EMBEDDING_DIM  # D


_CONFIGS = [
    LeoEmbeddingsConfig(name="mini_center", dataset_name="miniImageNet",
                        embedding_crop="center",
                        description="miniImageNet, WRN-28-10 features of the center crop."),
    LeoEmbeddingsConfig(name="mini_multiview", dataset_name="miniImageNet",
                        embedding_crop="multiview",
                        description="miniImageNet, WRN-28-10 features averaged over crops."),
    LeoEmbeddingsConfig(name="tiered_center", dataset_name="tieredImageNet",
                        embedding_crop="center",
                        description="tieredImageNet, WRN-28-10 features of the center crop."),
    LeoEmbeddingsConfig(name="synthetic_center", dataset_name=synthetic.DATASET_NAME,
                        embedding_crop=synthetic.EMBEDDING_CROP,
                        description="The project's synthetic set (python -m leo_tf.data.synthetic)."),
]


class LeoEmbeddings(tfds.core.GeneratorBasedBuilder):
  """Pre-trained image embeddings of Rusu et al. (2019), one example per image."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download embeddings.zip from the LEO paper's repository (github.com/deepmind/leo) and "
      "unzip it; pass the folder that holds miniImageNet/ and tieredImageNet/ as manual_dir "
      "(tfds.download.DownloadConfig(manual_dir=...)). For synthetic_center, run "
      "`python -m leo_tf.data.synthetic --output_path=<folder>` and pass that folder.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Features of a WRN-28-10 pre-trained on the meta-training classes, as "
                     "published with 'Meta-Learning with Latent Embedding Optimization'."),
        features=tfds.features.FeaturesDict({
            "embedding": tfds.features.Tensor(shape=(self.builder_config.embedding_dim,),
                                              dtype=np.float32),
            "key": tfds.features.Text(),
            "class_name": tfds.features.Text(),
            "image_name": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,  # keep file order; load_split_from_tfds also sorts by index
        homepage="https://github.com/deepmind/leo",
        citation=("@inproceedings{rusu2019leo, title={Meta-Learning with Latent Embedding "
                  "Optimization}, author={Rusu, Andrei A. and Rao, Dushyant and Sygnowski, Jakub "
                  "and Vinyals, Oriol and Pascanu, Razvan and Osindero, Simon and Hadsell, Raia},"
                  " booktitle={ICLR}, year={2019}}"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    generators = {}
    for split in emb.SPLITS:
      path = emb.split_path(os.fspath(dl_manager.manual_dir), config.dataset_name,
                            config.embedding_crop, split)
      if not os.path.isfile(path):
        raise emb.EmbeddingsError(
            f"{path}: no such embeddings file. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      generators[split] = self._generate_examples(path)
    return generators

  def _generate_examples(self, path: str):
    data = emb.read_embeddings_file(path, self.builder_config.embedding_dim)
    for i in range(data.num_examples):
      yield i, {
          "embedding": data.embeddings[i],  # [D]
          "key": data.keys[i],
          "class_name": data.class_names[i],
          "image_name": data.image_names[i],
          "index": i,
      }


def load_split_from_tfds(source: tfds.core.DatasetBuilder | tf.data.Dataset,
                         split: str | None = None, batch_size: int = 4096) -> emb.EmbeddingSplit:
  """Builds an EmbeddingSplit from a prepared `leo_embeddings` split.

  Args:
    source: a prepared LeoEmbeddings builder (then `split` names the split), or
      the tf.data.Dataset of one split, e.g. tfds.load("leo_embeddings/...",
      split="train"), in any order.
    split: "train", "val" or "test" when source is a builder; ignored otherwise.
    batch_size: examples read at a time.

  Returns:
    The same EmbeddingSplit as embeddings.load_split on the pickles the set was
    built from, except `paths`, which is ("tfds:<builder>/<split>",) or
    ("tfds:<dataset>",).

  Raises:
    ValueError: split missing for a builder, or the examples are not a whole
      split (indices not 0..n-1 once each).
  """
  if isinstance(source, tfds.core.DatasetBuilder):
    if split is None:
      raise ValueError("split is required when source is a builder: pass 'train', 'val' or 'test'.")
    dataset = source.as_dataset(split=split, shuffle_files=False)
    origin = f"tfds:{source.info.full_name}/{split}"
  elif isinstance(source, tf.data.Dataset):
    dataset = source
    origin = "tfds:<dataset>"
  else:
    raise ValueError(
        f"source must be a tfds DatasetBuilder or a tf.data.Dataset, got {type(source).__name__}.")

  embeddings, indices, keys = [], [], []
  for batch in tfds.as_numpy(dataset.batch(batch_size)):
    embeddings.append(batch["embedding"])  # [b, D]
    indices.append(batch["index"])  # [b]
    keys.extend(k.decode("utf-8") for k in batch["key"])
  if not embeddings:
    raise ValueError(f"{origin}: the dataset is empty; prepare the builder first.")
  indices = np.concatenate(indices, axis=0)  # [M]
  order = np.argsort(indices, kind="stable")
  if not np.array_equal(indices[order], np.arange(indices.size)):
    raise ValueError(
        f"{origin}: example indices are not 0..{indices.size - 1} once each; pass a whole, "
        "unfiltered split.")
  embeddings = np.concatenate(embeddings, axis=0)[order]  # [M, D], file order
  parsed = [emb.parse_key(keys[i], origin) for i in order]
  return emb.build_split(embeddings, [c for c, _ in parsed], [n for _, n in parsed], (origin,))
