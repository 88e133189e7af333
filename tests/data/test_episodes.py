"""leo_tf.data.episodes: seeded, vectorised N-way K-shot sampling."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.data import episodes
from tests import splits

D = 4


def _split(class_sizes, seed=0):
  return splits.make_split(class_sizes, seed, embedding_dim=D)


def _row_classes(split):
  """int [M]: the class id of every row of split.embeddings."""
  out = np.empty(split.num_images, np.int64)
  for c in range(split.num_classes):
    out[split.class_image_indices[c, :split.class_sizes[c]]] = c
  return out


def test_stream_ids_are_fixed_crc32_values():
  assert [episodes.stream_id(s) for s in ("train", "val", "test")] == [
      1550247075, 2548021861, 3632233996]


def test_shapes_dtypes_labels_and_gather():
  split = _split([12] * 7)
  sampler = episodes.EpisodeSampler(split, 5, 2, 3, seed=0, stream="train")
  problem = sampler.sample(step=4, batch_size=6)
  assert problem.tr_input.shape == (6, 5, 2, D) and problem.tr_input.dtype == np.float32
  assert problem.val_input.shape == (6, 5, 3, D) and problem.val_input.dtype == np.float32
  assert problem.tr_output.dtype == np.int32 and problem.val_output.dtype == np.int32
  np.testing.assert_array_equal(problem.tr_output[3], [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]])
  np.testing.assert_array_equal(problem.val_output, np.broadcast_to(
      np.arange(5)[None, :, None], (6, 5, 3)))
  indices = sampler.sample_indices(step=4, batch_size=6)
  assert indices.shape == (6, 5, 5) and indices.dtype == np.int32
  np.testing.assert_array_equal(problem.tr_input, split.embeddings[indices[:, :, :2]])
  np.testing.assert_array_equal(problem.val_input, split.embeddings[indices[:, :, 2:]])


def test_same_seed_and_step_repeat_streams_steps_and_seeds_differ():
  split = _split([30] * 10)
  a = episodes.EpisodeSampler(split, 5, 1, 4, seed=3, stream="train")
  b = episodes.EpisodeSampler(split, 5, 1, 4, seed=3, stream="train")
  later_first = b.sample_indices(9, 8)  # order of calls does not matter: no state
  np.testing.assert_array_equal(a.sample_indices(2, 8), b.sample_indices(2, 8))
  np.testing.assert_array_equal(a.sample_indices(9, 8), later_first)
  assert not np.array_equal(a.sample_indices(2, 8), a.sample_indices(3, 8))
  other_stream = episodes.EpisodeSampler(split, 5, 1, 4, seed=3, stream="val")
  assert not np.array_equal(a.sample_indices(2, 8), other_stream.sample_indices(2, 8))
  other_seed = episodes.EpisodeSampler(split, 5, 1, 4, seed=4, stream="train")
  assert not np.array_equal(a.sample_indices(2, 8), other_seed.sample_indices(2, 8))


def test_classes_and_images_distinct_and_support_query_disjoint():
  split = _split([9, 14, 30, 8, 11, 25, 10])
  sampler = episodes.EpisodeSampler(split, 5, 3, 5, seed=1, stream="train")
  indices = sampler.sample_indices(0, 3000)  # [B, N, K+V]
  assert indices.min() >= 0
  row_class = _row_classes(split)[indices]  # [B, N, K+V]
  # Every image of row n belongs to one class, and the N classes are distinct.
  assert (row_class == row_class[:, :, :1]).all()
  classes = np.sort(row_class[:, :, 0], axis=1)  # [B, N]
  assert (np.diff(classes, axis=1) > 0).all()
  # K + V distinct images per class, so support and query never overlap.
  images = np.sort(indices, axis=2)
  assert (np.diff(images, axis=2) > 0).all()


def _chi_square(counts):
  expected = counts.mean()
  return float(((counts - expected) ** 2 / expected).sum())


def test_classes_labels_and_images_are_uniform():
  # 8 classes of 6 images, 4-way, K=1, V=2, 6000 tasks.
  split = _split([6] * 8)
  sampler = episodes.EpisodeSampler(split, 4, 1, 2, seed=0, stream="train")
  indices = sampler.sample_indices(0, 6000)  # [B, N, K+V]
  row_class = _row_classes(split)[indices[:, :, 0]]  # [B, N]
  # (class, label) pairs: 32 cells of expected 750 each, 31 degrees of freedom.
  # P(chi2_31 > 70) < 1e-4; always taking the same classes or an unshuffled
  # class order gives thousands.
  pairs = np.bincount(row_class.ravel() * 4 + np.tile(np.arange(4), 6000), minlength=32)
  assert _chi_square(pairs) < 70
  # (image, support-or-query) cells: 48 images x 2 roles, expected 250 / 500.
  support = np.bincount(indices[:, :, 0].ravel(), minlength=48)
  query = np.bincount(indices[:, :, 1:].ravel(), minlength=48)
  assert _chi_square(support) < 100 and _chi_square(query) < 100  # 47 dof, p < 1e-5
  np.testing.assert_allclose(query.sum() / support.sum(), 2.0)


def test_unequal_class_sizes_never_draw_padding_and_reach_every_image():
  split = _split([3, 40, 5, 3, 100])
  sampler = episodes.EpisodeSampler(split, 3, 1, 2, seed=7, stream="train")
  indices = sampler.sample_indices(0, 4000)
  assert indices.min() >= 0
  assert set(np.unique(indices)) == set(range(split.num_images))


def test_all_images_of_a_class_when_k_plus_v_is_the_class_size():
  split = _split([6] * 5)
  v = episodes.num_eval_val_examples(split, 1)
  assert v == 5
  indices = episodes.EpisodeSampler(split, 5, 1, v, seed=0, stream="test").sample_indices(0, 50)
  np.testing.assert_array_equal(np.sort(indices, axis=2)[:, :, 0] >= 0, True)
  assert (np.diff(np.sort(indices, axis=2), axis=2) > 0).all()
  # Each image is the support one about 1 time in 6 (300 x 5 / 30 = 50 draws each).
  counts = np.bincount(
      episodes.EpisodeSampler(split, 5, 1, v, 0, "test").sample_indices(0, 300)[:, :, 0].ravel(),
      minlength=30)
  assert counts.min() > 20 and counts.max() < 85


def test_num_eval_val_examples_uses_smallest_class():
  split = _split([600, 732, 610])
  assert episodes.num_eval_val_examples(split, 1) == 599
  assert episodes.num_eval_val_examples(split, 5) == 595
  with pytest.raises(ValueError, match="class 'c00', which has 600 images") as info:
    episodes.num_eval_val_examples(split, 600)
  assert str(info.value) == (
      "num_tr_examples_per_class (K=600) leaves no query image in class 'c00', which has 600 "
      "images; lower --num_tr_examples_per_class (K) to at most 599.")


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_classes=6), r"num_classes \(N=6\) exceeds the 5 classes"),
    (dict(num_val_examples_per_class=7), r"class 'c02' has 4 images, fewer than K \+ V = 1 \+ 7"),
    (dict(num_tr_examples_per_class=0), "num_tr_examples_per_class must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(stream=""), "stream must be a non-empty string"),
])
def test_construction_errors(kwargs, message):
  split = _split([10, 9, 4, 8, 12])
  args = dict(num_classes=5, num_tr_examples_per_class=1, num_val_examples_per_class=2, seed=0,
              stream="train")
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    episodes.EpisodeSampler(split, **args)


def test_too_small_classes_say_which_flag_values_fit():
  # The case: --num_tr_examples_per_class=590 with V = 15 on 600 images per
  # class; 600 - 590 = 10 queries fit, or 600 - 15 = 585 shots.
  with pytest.raises(ValueError) as info:
    episodes.EpisodeSampler(_split([600, 610]), 2, 590, 15, seed=0, stream="train")
  assert str(info.value) == (
      "<test>: class 'c00' has 600 images, fewer than K + V = 590 + 15 = 605 (the smallest of 1 "
      "class(es) too small); lower --num_val_examples_per_class (V) to at most 10 or "
      "--num_tr_examples_per_class (K) to at most 585.")


@pytest.mark.parametrize("k,v,message", [
    # Sizes 10, 9, 4, 8, 12: the smallest class, c02, holds 4 images.
    (1, 7, "class 'c02' has 4 images, fewer than K + V = 1 + 7 = 8 (the smallest of 1 class(es) "
           "too small); lower --num_val_examples_per_class (V) to at most 3."),
    (5, 2, "class 'c02' has 4 images, fewer than K + V = 5 + 2 = 7 (the smallest of 1 class(es) "
           "too small); lower --num_tr_examples_per_class (K) to at most 2."),
    (5, 5, "class 'c02' has 4 images, fewer than K + V = 5 + 5 = 10 (the smallest of 3 "
           "class(es) too small); lower --num_tr_examples_per_class (K) and "
           "--num_val_examples_per_class (V) to K + V <= 4."),
])
def test_too_small_classes_name_only_the_flags_that_can_fix_it(k, v, message):
  with pytest.raises(ValueError) as info:
    episodes.EpisodeSampler(_split([10, 9, 4, 8, 12]), 5, k, v, seed=0, stream="train")
  assert str(info.value) == "<test>: " + message


def test_bad_step_and_batch_size():
  sampler = episodes.EpisodeSampler(_split([5] * 5), 5, 1, 1, 0, "train")
  with pytest.raises(ValueError, match="step must be an integer >= 0"):
    sampler.sample(-1, 2)
  with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
    sampler.sample(0, 0)


def test_iterate_tasks_yields_exact_count_in_chunks():
  sampler = episodes.EpisodeSampler(_split([10] * 6), 5, 1, 9, 0, "test")
  chunks = list(episodes.iterate_tasks(sampler, num_tasks=23, chunk_size=10))
  assert [c.tr_input.shape[0] for c in chunks] == [10, 10, 3]
  first = 0
  for chunk in chunks:
    expected = sampler.sample_tasks(first, chunk.tr_input.shape[0])
    first += chunk.tr_input.shape[0]
    for got, want in zip(chunk, expected):
      np.testing.assert_array_equal(got, want)
  assert [c.tr_input.shape[0] for c in episodes.iterate_tasks(sampler, 20, 10)] == [10, 10]
  assert list(episodes.iterate_tasks(sampler, 0, 10)) == []


def test_make_dataset_matches_sampler_with_static_shapes():
  sampler = episodes.EpisodeSampler(_split([8] * 6), 3, 2, 4, 5, "train")
  dataset = episodes.make_dataset(sampler, batch_size=4, start_step=7, num_steps=5)
  assert dataset.element_spec.tr_input.shape == (4, 3, 2, D)
  assert dataset.element_spec.val_output.shape == (4, 3, 4)
  assert dataset.element_spec.tr_output.dtype == tf.int32
  batches = list(dataset)
  assert len(batches) == 5
  for i, batch in enumerate(batches):
    assert isinstance(batch, episodes.ProblemInstance)
    for got, want in zip(batch, sampler.sample(7 + i, 4)):
      np.testing.assert_array_equal(got.numpy(), want)


def test_iterate_tasks_gives_the_same_tasks_for_every_chunk_size():
  sampler = episodes.EpisodeSampler(_split([6, 5, 7, 6]), 3, 1, 2, seed=4, stream="test")
  by_size = {}
  for chunk_size in (1, 3, 7, 20):
    chunks = list(episodes.iterate_tasks(sampler, num_tasks=17, chunk_size=chunk_size))
    by_size[chunk_size] = np.concatenate([c.val_input for c in chunks], axis=0)
    assert by_size[chunk_size].shape[0] == 17
  for chunk_size in (3, 7, 20):
    np.testing.assert_array_equal(by_size[chunk_size], by_size[1])
  single = sampler.sample(5, 1)
  np.testing.assert_array_equal(sampler.sample_tasks(5, 1).tr_input, single.tr_input)
