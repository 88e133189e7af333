r"""A synthetic few-shot dataset in the published LEO embeddings format.

    python -m leo_tf.data.synthetic --output_path=data/embeddings

writes <output_path>/synthetic/center/{train,val,test}_embeddings.pkl (with
embeddings.write_split, so exactly the published layout and pickle structure)
and synthetic_info.json beside them: the generator settings and the
nearest-class-mean (NCM) accuracy on the test split, the baseline a
meta-learner must beat.

How an example of class c is made (D = embedding_dim, S = signal_dim,
Q = nuisance_dim; U_s [D, S] and U_n [D, Q] are orthonormal, mutually
orthogonal, shared by all splits):

  mu_c ~ N(0, (class_separation^2 / S) I_S)          class mean, |mu_c| ~ separation
  h    = bias + U_s mu_c + U_n z + eps,  z ~ N(0, nuisance_scale^2 I_Q),
                                          eps ~ N(0, noise_scale^2 I_D)
  x    = softplus(h)                                   non-negative, like post-ReLU
                                                       average-pooled CNN features

The nuisance z is large and shared by all classes, so it dominates cosine
distances between raw features and NCM on them is poor; a linear map that
discards U_n (as LEO's encoder can learn on the meta-training classes) does
much better. synthetic_info.json reports both: NCM on the raw features, and
NCM after removing the (known) nuisance subspace from the features.

Keys are "<split>-<class>-<class>_<i>.JPEG" with WordNet-like class ids
"s%08d" (unique across splits) and i = 1..images_per_class unpadded, like
ImageNet file names, so the S-dtype key array is NUL-padded like the published
ones. Files are byte-identical for the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from leo_tf.core import statistics
from leo_tf.data import atomic
from leo_tf.data import embeddings as emb
from leo_tf.data import episodes

DATASET_NAME = "synthetic"
EMBEDDING_CROP = "center"
INFO_FILE = "synthetic_info.json"
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}  # rng stream of each split
_BASIS_STREAM = 3  # rng stream of the shared subspaces and bias
_NCM_QUERIES = 15  # query images per class in the NCM evaluation
_NCM_CHUNK = 250  # tasks per evaluation chunk (bounds memory)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Settings of the synthetic dataset; the defaults mimic miniImageNet's shape."""

  seed: int = 0  # everything below is a deterministic function of it
  num_train_classes: int = 64  # as miniImageNet
  num_val_classes: int = 16  # as miniImageNet
  num_test_classes: int = 20  # as miniImageNet
  images_per_class: int = 600  # as miniImageNet
  embedding_dim: int = 640  # D, as the WRN-28-10 features
  signal_dim: int = 32  # S, dimension of the subspace holding the class means
  nuisance_dim: int = 32  # Q, dimension of the shared nuisance subspace
  class_separation: float = 9.5  # expected norm of a class mean (pre-softplus)
  nuisance_scale: float = 4.0  # std of the nuisance along each of its Q directions
  noise_scale: float = 0.5  # std of the isotropic noise along each of the D dims

  def __post_init__(self):
    for name in ("num_train_classes", "num_val_classes", "num_test_classes", "signal_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.images_per_class < 2:
      raise ValueError(
          f"images_per_class must be >= 2 (a support and a query image), got "
          f"{self.images_per_class}.")
    if self.nuisance_dim < 0:
      raise ValueError(f"nuisance_dim must be >= 0, got {self.nuisance_dim}.")
    if self.signal_dim + self.nuisance_dim > self.embedding_dim:
      raise ValueError(
          f"signal_dim + nuisance_dim ({self.signal_dim} + {self.nuisance_dim}) must not exceed "
          f"embedding_dim ({self.embedding_dim}); lower them or raise embedding_dim.")
    for name in ("class_separation", "nuisance_scale", "noise_scale"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    if self.seed < 0:
      raise ValueError(f"seed must be >= 0, got {self.seed}.")

  def num_classes(self, split: str) -> int:
    return {"train": self.num_train_classes, "val": self.num_val_classes,
            "test": self.num_test_classes}[split]

  def first_class_id(self, split: str) -> int:
    """Class ids run over train, then val, then test, so they never collide."""
    return {"train": 0, "val": self.num_train_classes,
            "test": self.num_train_classes + self.num_val_classes}[split]


@dataclasses.dataclass(frozen=True, eq=False)
class Subspaces:
  """The structure shared by all splits.

  signal: float32 [D, S], orthonormal columns spanning the class means.
  nuisance: float32 [D, Q], orthonormal columns orthogonal to `signal`.
  bias: float32 [D], the pre-softplus offset of every feature.
  """

  signal: np.ndarray
  nuisance: np.ndarray
  bias: np.ndarray


def make_subspaces(config: SyntheticConfig) -> Subspaces:
  """The orthonormal signal and nuisance bases and the bias, from config.seed."""
  rng = np.random.default_rng([config.seed, _BASIS_STREAM])
  s, q, d = config.signal_dim, config.nuisance_dim, config.embedding_dim
  gaussian = rng.standard_normal((d, s + q))  # [D, S+Q]
  basis, _ = np.linalg.qr(gaussian)  # [D, S+Q], orthonormal columns
  bias = rng.standard_normal(d)  # [D]
  return Subspaces(signal=basis[:, :s].astype(np.float32),
                   nuisance=basis[:, s:].astype(np.float32),
                   bias=bias.astype(np.float32))


def class_name(class_id: int) -> str:
  return f"s{class_id:08d}"


def generate_split(config: SyntheticConfig, split: str,
                   subspaces: Subspaces | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
  """Generates one split's rows, grouped by class.

  Returns:
    embeddings: float32 [C * I, D], non-negative (I = images_per_class).
    keys: C * I keys "<split>-<class>-<class>_<i>.JPEG".
    labels: int64 [C * I], the class index within the split.
  """
  if split not in _SPLIT_STREAM:
    raise ValueError(f"split must be one of {tuple(_SPLIT_STREAM)}, got {split!r}.")
  subspaces = subspaces or make_subspaces(config)
  rng = np.random.default_rng([config.seed, _SPLIT_STREAM[split]])
  c, i = config.num_classes(split), config.images_per_class
  s, q, d = config.signal_dim, config.nuisance_dim, config.embedding_dim
  means = rng.standard_normal((c, s), dtype=np.float32)  # [C, S]
  means *= config.class_separation / np.sqrt(s)
  nuisance = rng.standard_normal((c * i, q), dtype=np.float32)  # [C*I, Q]
  nuisance *= config.nuisance_scale
  h = rng.standard_normal((c * i, d), dtype=np.float32)  # [C*I, D], isotropic noise
  h *= config.noise_scale
  h += subspaces.bias  # [D] broadcast over rows
  # [C, S] @ [S, D] -> [C, D], repeated per image -> [C*I, D]
  h += np.repeat(means @ subspaces.signal.T, i, axis=0)
  h += nuisance @ subspaces.nuisance.T  # [C*I, Q] @ [Q, D] -> [C*I, D]
  np.logaddexp(np.float32(0.0), h, out=h)  # softplus, in place
  labels = np.repeat(np.arange(c, dtype=np.int64), i)  # [C*I]
  first = config.first_class_id(split)
  keys = []
  for label in range(c):
    name = class_name(first + label)
    keys.extend(f"{split}-{name}-{name}_{j}.JPEG" for j in range(1, i + 1))
  return h, keys, labels


def _normalize(x: np.ndarray) -> np.ndarray:
  """x / |x| along the last axis (rows of norm below 1e-6 are divided by 1e-6)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def ncm_accuracy(split: emb.EmbeddingSplit, num_shots: int, num_tasks: int, seed: int = 0,
                 num_ways: int = 5, num_queries: int = _NCM_QUERIES,
                 remove_subspace: np.ndarray | None = None) -> tuple[float, float]:
  """Nearest-class-mean (prototype) accuracy with cosine similarity.

  Each task's prototypes are the means of the L2-normalised support features,
  L2-normalised again; a query takes the label of the most cosine-similar
  prototype.

  Args:
    split: the features (already L2-normalised rows).
    num_shots: K.
    num_tasks: tasks to average over (drawn from the "ncm" stream).
    seed: sampler seed.
    num_ways: N.
    num_queries: query images per class.
    remove_subspace: optional float [D, R] orthonormal columns projected out of
      every feature (then re-normalised) before classifying.

  Returns:
    (mean task accuracy, half-width of its 95% normal interval).
  """
  sampler = episodes.EpisodeSampler(split, num_ways, num_shots, num_queries, seed, "ncm")
  accuracies = []
  for problem in episodes.iterate_tasks(sampler, num_tasks, _NCM_CHUNK):
    tr, val = problem.tr_input, problem.val_input  # [B, N, K, D], [B, N, V, D]
    b, n, v, d = val.shape
    if remove_subspace is not None:
      p = remove_subspace.astype(np.float32)  # [D, R]
      tr = _normalize(tr - (tr @ p) @ p.T)  # [B, N, K, D] @ [D, R] @ [R, D] -> [B, N, K, D]
      val = _normalize(val - (val @ p) @ p.T)  # [B, N, V, D]
    prototypes = _normalize(tr.mean(axis=2))  # [B, N, K, D] -> [B, N, D]
    # [B, N*V, D] @ [B, D, N] -> [B, N*V, N] -> [B, N, V, N]
    similarity = (val.reshape(b, n * v, d) @ prototypes.transpose(0, 2, 1)).reshape(b, n, v, n)
    predicted = np.argmax(similarity, axis=-1)  # [B, N, V]
    accuracies.append(np.mean(predicted == problem.val_output, axis=(1, 2)))  # [B]
  mean, half_width, _ = statistics.confidence_interval(np.concatenate(accuracies, axis=0))
  return mean, half_width


def _settings(config: SyntheticConfig, num_eval_tasks: int) -> dict[str, Any]:
  return dict(dataclasses.asdict(config), num_eval_tasks=num_eval_tasks,
              ncm_queries_per_class=_NCM_QUERIES)


def output_folder(output_path: str) -> str:
  """<output_path>/synthetic/center: where the generator writes."""
  return os.path.join(output_path, DATASET_NAME, EMBEDDING_CROP)


def generate(config: SyntheticConfig, output_path: str, num_eval_tasks: int = 2000,
             overwrite: bool = False) -> dict[str, Any]:
  """Writes the three splits and synthetic_info.json; returns the info.

  If the files exist and synthetic_info.json records the same settings, nothing
  is regenerated (the recorded info is returned, with "skipped": true) unless
  overwrite.

  Args:
    config: the generator settings.
    output_path: the data_path of the result (files go to output_folder()).
    num_eval_tasks: tasks for each NCM accuracy (5-way 1-shot and 5-shot).
    overwrite: regenerate even if the same files exist.

  Returns:
    The info written to synthetic_info.json: "settings", "ncm" (raw features),
    "ncm_nuisance_removed", "files"; plus "skipped" and "seconds" (not written).
  """
  if num_eval_tasks < 2:
    raise ValueError(f"num_eval_tasks must be >= 2 (for an interval), got {num_eval_tasks}.")
  folder = output_folder(output_path)
  info_path = os.path.join(folder, INFO_FILE)
  settings = _settings(config, num_eval_tasks)
  paths = {split: emb.split_path(output_path, DATASET_NAME, EMBEDDING_CROP, split)
           for split in _SPLIT_STREAM}
  if not overwrite and os.path.isfile(info_path) and all(map(os.path.isfile, paths.values())):
    with open(info_path, encoding="utf-8") as f:
      recorded = json.load(f)
    if recorded.get("settings") == settings:
      return dict(recorded, skipped=True, seconds=0.0)

  start = time.perf_counter()
  if os.path.exists(info_path):
    # The info file is written last: with it gone, a run stopped half-way is
    # never mistaken for a complete one.
    os.remove(info_path)
  subspaces = make_subspaces(config)
  files = {}
  for split, path in paths.items():
    embeddings, keys, labels = generate_split(config, split, subspaces)
    emb.write_split(path, embeddings, keys, labels)
    files[split] = {"path": os.path.relpath(path, folder), "num_images": len(keys),
                    "num_classes": config.num_classes(split), "bytes": os.path.getsize(path)}
    del embeddings

  # Evaluate what a reader of the files gets.
  test_file = emb.read_embeddings_file(paths["test"], config.embedding_dim)
  test = emb.build_split(test_file.embeddings, test_file.class_names, test_file.image_names,
                         (test_file.path,))

  ncm, ncm_removed = {}, {}
  for shots in (1, 5):
    if config.images_per_class < shots + _NCM_QUERIES or test.num_classes < 5:
      continue  # too small a set for this evaluation
    name = f"5way_{shots}shot"
    for results, removed in ((ncm, None), (ncm_removed, subspaces.nuisance)):
      accuracy, half_width = ncm_accuracy(test, shots, num_eval_tasks, seed=config.seed,
                                          remove_subspace=removed)
      results[name] = {"accuracy": accuracy, "ci95": half_width}
  info = {
      "settings": settings,
      "dataset_name": DATASET_NAME,
      "embedding_crop": EMBEDDING_CROP,
      "ncm_split": "test",
      "ncm": ncm,
      "ncm_nuisance_removed": ncm_removed,
      "files": files,
  }
  atomic.write_json_atomically(info_path, info)
  return dict(info, skipped=False, seconds=time.perf_counter() - start)


def format_report(info: dict[str, Any]) -> str:
  """A few lines for the terminal."""
  lines = []
  if info.get("skipped"):
    lines.append("Files exist with the same settings: not regenerated (pass --overwrite to force).")
  else:
    lines.append(f"Generated in {info['seconds']:.1f} s.")
  for split, f in info["files"].items():
    lines.append(f"  {split:5s}: {f['num_classes']} classes, {f['num_images']} images, "
                 f"{f['bytes'] / 2**20:.1f} MiB")
  n = info["settings"]["num_eval_tasks"]
  for name, result in info["ncm"].items():
    removed = info["ncm_nuisance_removed"][name]
    lines.append(
        f"  NCM {name} on test ({n} tasks): {100 * result['accuracy']:.2f} "
        f"+- {100 * result['ci95']:.2f}%  (nuisance removed: {100 * removed['accuracy']:.2f} "
        f"+- {100 * removed['ci95']:.2f}%)")
  return "\n".join(lines)


def where_line(info: dict[str, Any], output_path: str) -> str:
  """The command's last line: whether the files were written or kept, and how to use them.

  Args:
    info: what generate() returned ("skipped" true when nothing was regenerated).
    output_path: the folder passed to generate() (the data_path of the result).
  """
  use = f"use data_path={output_path} dataset_name={DATASET_NAME}"
  embedding_dim = info["settings"]["embedding_dim"]
  if embedding_dim != emb.DEFAULT_EMBEDDING_DIM:
    use += f" embedding_dim={embedding_dim}"
  if info.get("skipped"):
    return f"Kept {output_folder(output_path)} (already generated with these settings); {use}."
  return f"Wrote {output_folder(output_path)}; {use}."


def main(argv):
  del argv  # Unused.
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = SyntheticConfig(
      seed=f.seed, num_train_classes=f.num_train_classes, num_val_classes=f.num_val_classes,
      num_test_classes=f.num_test_classes, images_per_class=f.images_per_class,
      embedding_dim=f.embedding_dim, signal_dim=f.signal_dim, nuisance_dim=f.nuisance_dim,
      class_separation=f.class_separation, nuisance_scale=f.nuisance_scale,
      noise_scale=f.noise_scale)
  info = generate(config, f.output_path, num_eval_tasks=f.num_eval_tasks, overwrite=f.overwrite)
  print(format_report(info))
  print(where_line(info, f.output_path))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  defaults = SyntheticConfig()
  flags.DEFINE_string("output_path", "data/embeddings",
                      "Folder to write synthetic/center/*_embeddings.pkl into (the data_path).")
  flags.DEFINE_integer("seed", defaults.seed, "Seed; the same flags give byte-identical files.")
  flags.DEFINE_integer("num_train_classes", defaults.num_train_classes, "Meta-training classes.")
  flags.DEFINE_integer("num_val_classes", defaults.num_val_classes, "Meta-validation classes.")
  flags.DEFINE_integer("num_test_classes", defaults.num_test_classes, "Meta-test classes.")
  flags.DEFINE_integer("images_per_class", defaults.images_per_class, "Images per class.")
  flags.DEFINE_integer("embedding_dim", defaults.embedding_dim, "D, the feature size.")
  flags.DEFINE_integer("signal_dim", defaults.signal_dim, "S, dimension of the class means.")
  flags.DEFINE_integer("nuisance_dim", defaults.nuisance_dim,
                       "Q, dimension of the shared nuisance subspace.")
  flags.DEFINE_float("class_separation", defaults.class_separation,
                     "Expected norm of a class mean; 0 makes classes indistinguishable.")
  flags.DEFINE_float("nuisance_scale", defaults.nuisance_scale,
                     "Std of the shared nuisance variation per nuisance direction.")
  flags.DEFINE_float("noise_scale", defaults.noise_scale, "Std of the isotropic noise per dim.")
  flags.DEFINE_integer("num_eval_tasks", 2000, "Tasks per NCM accuracy (5-way 1- and 5-shot).")
  flags.DEFINE_bool("overwrite", False, "Regenerate even if files with these settings exist.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
