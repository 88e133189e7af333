"""N-way K-shot problem instances (episodes) drawn from an EmbeddingSplit.

Each task takes N distinct classes in random order (the class in row n gets
label n, so labels follow a shuffled class order, as in the original), and for
each class K + V distinct images: the first K are the support ("tr") set, the
other V the query ("val") set.

Sampling is counter-based: the batch for step s is a pure function of
(seed, stream, s), drawn from np.random.default_rng([seed, stream_id, s]). A
sampler has no mutable state; to resume a run at step s, ask for step s.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

if TYPE_CHECKING:
  import tensorflow as tf

from leo_tf.data.embeddings import EmbeddingSplit

# Keys above every np.random.random() draw, so padded slots sort last.
_PAD_KEY = 2.0


class ProblemInstance(NamedTuple):
  """A batch of B N-way tasks (numpy arrays or tf tensors).

  tr_input: float32 [B, N, K, D], support embeddings.
  tr_output: int32 [B, N, K], support labels (row n holds label n).
  val_input: float32 [B, N, V, D], query embeddings.
  val_output: int32 [B, N, V], query labels.
  """

  tr_input: np.ndarray
  tr_output: np.ndarray
  val_input: np.ndarray
  val_output: np.ndarray


def stream_id(stream: str) -> int:
  """A stable non-negative id for a stream name ("train", "val", "test", ...).

  CRC-32 of the UTF-8 name, so it is the same in every process (unlike hash()).
  """
  if not isinstance(stream, str) or not stream:
    raise ValueError(f"stream must be a non-empty string such as 'train', got {stream!r}.")
  return zlib.crc32(stream.encode("utf-8"))


def num_eval_val_examples(split: EmbeddingSplit, num_tr_examples_per_class: int) -> int:
  """V for meta-validation and meta-test: every image of the smallest class left after K.

  The original uses 600 - K on miniImageNet (600 images per class).

  Raises:
    ValueError: K leaves no query image in the smallest class.
  """
  smallest = int(split.class_sizes.min(axis=0))
  if num_tr_examples_per_class >= smallest:
    c = int(np.argmin(split.class_sizes, axis=0))
    raise ValueError(
        f"num_tr_examples_per_class (K={num_tr_examples_per_class}) leaves no query image in "
        f"class {split.class_names[c]!r}, which has {smallest} images; lower "
        f"--num_tr_examples_per_class (K) to at most {smallest - 1}.")
  return smallest - num_tr_examples_per_class


def _fitting_k_and_v(split: EmbeddingSplit, num_tr_examples_per_class: int,
                     num_val_examples_per_class: int) -> str:
  """What to lower so that K + V images fit in the split's smallest class, in flags."""
  smallest = int(split.class_sizes.min(axis=0))
  largest_v = smallest - num_tr_examples_per_class  # V that fits with this K
  largest_k = smallest - num_val_examples_per_class  # K that fits with this V
  lower_v = f"--num_val_examples_per_class (V) to at most {largest_v}"
  lower_k = f"--num_tr_examples_per_class (K) to at most {largest_k}"
  if largest_v >= 1 and largest_k >= 1:
    return f"lower {lower_v} or {lower_k}."
  if largest_v >= 1:
    return f"lower {lower_v}."
  if largest_k >= 1:
    return f"lower {lower_k}."
  return (f"lower --num_tr_examples_per_class (K) and --num_val_examples_per_class (V) to "
          f"K + V <= {smallest}.")


class EpisodeSampler:
  """Draws batches of N-way K-shot tasks from one split, reproducibly.

  The batch for step s comes from np.random.default_rng([seed, stream_id(stream), s]):
  the same (seed, stream, step, batch_size) always gives the same tasks,
  different streams ("train", "val", "test") are independent, and the step is
  the sampler's whole state, so resuming at step s reproduces the run exactly.
  Sampling is vectorised over tasks and classes (random keys, argsort /
  argpartition); padded slots of small classes get keys above every draw and
  are never chosen.
  """

  def __init__(self, split: EmbeddingSplit, num_classes: int, num_tr_examples_per_class: int,
               num_val_examples_per_class: int, seed: int, stream: str):
    """Checks that the split can provide the tasks.

    Args:
      split: the embeddings to draw from.
      num_classes: N, classes per task.
      num_tr_examples_per_class: K, support images per class.
      num_val_examples_per_class: V, query images per class.
      seed: non-negative integer seed.
      stream: name of an independent stream, e.g. "train", "val" or "test".

    Raises:
      ValueError: N, K, V or seed out of range, N above the split's number of
        classes, or a class with fewer than K + V images (the smallest is named,
        with the largest --num_val_examples_per_class or
        --num_tr_examples_per_class that fits).
    """
    for name, value in (("num_classes", num_classes),
                        ("num_tr_examples_per_class", num_tr_examples_per_class),
                        ("num_val_examples_per_class", num_val_examples_per_class)):
      if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if int(seed) != seed or seed < 0:
      raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    if num_classes > split.num_classes:
      raise ValueError(
          f"num_classes (N={num_classes}) exceeds the {split.num_classes} classes of the split "
          f"({', '.join(split.paths)}); use N <= {split.num_classes}.")
    per_class = num_tr_examples_per_class + num_val_examples_per_class
    too_small = np.flatnonzero(split.class_sizes < per_class)
    if too_small.size:
      c = int(np.argmin(split.class_sizes, axis=0))  # the first of the smallest classes
      raise ValueError(
          f"{', '.join(split.paths)}: class {split.class_names[c]!r} has "
          f"{int(split.class_sizes[c])} images, fewer than K + V = {num_tr_examples_per_class} "
          f"+ {num_val_examples_per_class} = {per_class} (the smallest of {too_small.size} "
          "class(es) too small); "
          + _fitting_k_and_v(split, num_tr_examples_per_class, num_val_examples_per_class))
    self.split = split
    self.num_classes = int(num_classes)
    self.num_tr_examples_per_class = int(num_tr_examples_per_class)
    self.num_val_examples_per_class = int(num_val_examples_per_class)
    self.seed = int(seed)
    self.stream = stream
    self._stream_id = stream_id(stream)
    self._num_images = per_class
    max_images = split.class_image_indices.shape[1]
    # [C, max_images] True where the slot is padding.
    self._is_padding = np.arange(max_images)[None, :] >= split.class_sizes[:, None]
    self._embeddings = np.ascontiguousarray(split.embeddings)  # [M, D]

  def _rng(self, step: int) -> np.random.Generator:
    if int(step) != step or step < 0:
      raise ValueError(f"step must be an integer >= 0, got {step!r}.")
    return np.random.default_rng([self.seed, self._stream_id, int(step)])

  def sample_indices(self, step: int, batch_size: int) -> np.ndarray:
    """Returns int32 [B, N, K + V] rows of split.embeddings for step `step`.

    [:, :, :K] are the support images, [:, :, K:] the queries; entry [b, n]
    are images of the n-th class drawn for task b.
    """
    if int(batch_size) != batch_size or batch_size < 1:
      raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    rng = self._rng(step)
    n, per_class = self.num_classes, self._num_images
    num_classes_total, max_images = self.split.class_image_indices.shape

    # Classes: the N smallest of C uniform keys, in key order (a uniformly
    # random ordered draw without replacement).
    class_keys = rng.random((batch_size, num_classes_total))  # [B, C]
    classes = np.argsort(class_keys, axis=1)[:, :n]  # [B, C] -> [B, N]

    # Images: K + V smallest keys among each class's real slots, in key order.
    image_keys = rng.random((batch_size, n, max_images))  # [B, N, max_images]
    image_keys[self._is_padding[classes]] = _PAD_KEY  # padding never among the smallest
    if per_class < max_images:
      slots = np.argpartition(image_keys, per_class - 1, axis=2)[:, :, :per_class]  # [B, N, K+V]
      chosen_keys = np.take_along_axis(image_keys, slots, axis=2)  # [B, N, K+V]
      slots = np.take_along_axis(slots, np.argsort(chosen_keys, axis=2), axis=2)  # key order
    else:
      slots = np.argsort(image_keys, axis=2)  # [B, N, max_images], max_images == K+V
    # [C, max_images][[B, N, 1], [B, N, K+V]] -> [B, N, K+V]
    return self.split.class_image_indices[classes[:, :, None], slots].astype(np.int32)

  def sample(self, step: int, batch_size: int) -> ProblemInstance:
    """Returns the numpy ProblemInstance of step `step` (see sample_indices)."""
    return self.gather(self.sample_indices(step, batch_size))

  def sample_tasks(self, first_task: int, num_tasks: int) -> ProblemInstance:
    """Tasks first_task .. first_task + num_tasks - 1, task t being step t's single task.

    Task t does not depend on how the tasks are grouped, so an evaluation over
    num_tasks tasks sees the same tasks whatever its chunk size.
    """
    return self.gather(self.sample_task_indices(first_task, num_tasks))

  def sample_task_indices(self, first_task: int, num_tasks: int) -> np.ndarray:
    """The image rows int32 [num_tasks, N, K + V] of the tasks of sample_tasks."""
    return np.concatenate([self.sample_indices(first_task + t, 1)
                           for t in range(num_tasks)], axis=0)  # [num_tasks, N, K+V]

  def gather(self, indices: np.ndarray) -> ProblemInstance:
    """The ProblemInstance of image rows `indices` int [B, N, K + V] (first K: support)."""
    k, d = self.num_tr_examples_per_class, self.split.embedding_dim
    b, n, per_class = indices.shape
    tr_input = np.take(self._embeddings, indices[:, :, :k].reshape(-1), axis=0)  # [B*N*K, D]
    val_input = np.take(self._embeddings, indices[:, :, k:].reshape(-1), axis=0)  # [B*N*V, D]
    labels = np.arange(n, dtype=np.int32)[None, :, None]  # [1, N, 1]
    return ProblemInstance(
        tr_input=tr_input.reshape(b, n, k, d),  # [B*N*K, D] -> [B, N, K, D]
        tr_output=np.broadcast_to(labels, (b, n, k)).copy(),  # [B, N, K]
        val_input=val_input.reshape(b, n, per_class - k, d),  # [B*N*V, D] -> [B, N, V, D]
        val_output=np.broadcast_to(labels, (b, n, per_class - k)).copy())  # [B, N, V]


def make_dataset(sampler: EpisodeSampler, batch_size: int, start_step: int,
                 num_steps: int) -> "tf.data.Dataset":
  """A tf.data pipeline of the sampler's batches for steps start_step .. start_step+num_steps-1.

  Element i is sampler.sample(start_step + i, batch_size) as tf tensors with
  static shapes [B, N, K, D], [B, N, K], [B, N, V, D], [B, N, V]; the order is
  deterministic even though batches are drawn in parallel and prefetched.
  (TensorFlow is imported here, so the numpy sampler does not need it.)
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if int(start_step) != start_step or start_step < 0 or int(num_steps) != num_steps or num_steps < 0:
    raise ValueError(
        f"start_step and num_steps must be integers >= 0, got {start_step!r} and {num_steps!r}.")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
  b, n = int(batch_size), sampler.num_classes
  k, v = sampler.num_tr_examples_per_class, sampler.num_val_examples_per_class
  d = sampler.split.embedding_dim

  def sample_step(step: np.ndarray):
    return tuple(sampler.sample(int(step), b))

  def to_problem(step: "tf.Tensor") -> ProblemInstance:
    tensors = tf.numpy_function(sample_step, [step], [tf.float32, tf.int32, tf.float32, tf.int32],
                                stateful=False)
    for tensor, shape in zip(tensors, ([b, n, k, d], [b, n, k], [b, n, v, d], [b, n, v])):
      tensor.set_shape(shape)
    return ProblemInstance(*tensors)

  dataset = tf.data.Dataset.range(int(start_step), int(start_step) + int(num_steps))
  dataset = dataset.map(to_problem, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def iterate_tasks(sampler: EpisodeSampler, num_tasks: int,
                  chunk_size: int) -> Iterator[ProblemInstance]:
  """Yields num_tasks tasks as numpy chunks of at most chunk_size tasks.

  The tasks are sampler.sample_tasks(0, num_tasks) in order: the same tasks for
  every chunk size. Peak memory is bounded by chunk_size whatever num_tasks
  (for evaluation with every remaining image as a query).
  """
  if int(num_tasks) != num_tasks or num_tasks < 0:
    raise ValueError(f"num_tasks must be an integer >= 0, got {num_tasks!r}.")
  if int(chunk_size) != chunk_size or chunk_size < 1:
    raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
  first = 0
  remaining = int(num_tasks)
  while remaining > 0:
    size = min(int(chunk_size), remaining)
    yield sampler.sample_tasks(first, size)
    remaining -= size
    first += size
