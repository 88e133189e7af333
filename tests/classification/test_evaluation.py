"""leo_tf.classification.evaluation: the fast SplitEvaluator equals the straightforward
evaluation, and chunked evaluations see the same tasks whatever the chunk size."""

import numpy as np
import pytest

from leo_tf.classification import evaluation
from leo_tf.classification import metasgd
from leo_tf.classification.leo import LEO
from leo_tf.core.config import DataConfig, ModelConfig
from leo_tf.data import embeddings as embeddings_lib
from leo_tf.data import episodes

N, K, V, D, NZ = 3, 2, 3, 8, 4


def _model():
  return LEO(ModelConfig(embedding_dim=D, num_latents=NZ, inner_unroll_length=2,
                         finetuning_unroll_length=1, dropout_rate=0.0), seed=0)


def _split(class_sizes, seed=5):
  """An in-memory split of float32 [M, D] features, its classes interleaved in the file."""
  rng = np.random.default_rng(seed)
  names = [f"c{c}" for c, size in enumerate(class_sizes) for _ in range(size)]
  order = rng.permutation(len(names))  # classes interleaved in the file, as they may be
  names = [names[i] for i in order]
  features = rng.standard_normal((len(names), D)).astype(np.float32)
  return embeddings_lib.build_split(features, names, [f"{n}_{i}" for i, n in enumerate(names)],
                                    ("random",))


def _perturb(model, seed=6):
  rng_vars = np.random.default_rng(seed)
  for var in model.meta_variables:  # off the initial point: accuracies vary across tasks
    var.assign(var.numpy() + 0.3 * rng_vars.standard_normal(var.shape).astype(np.float32))


@pytest.mark.parametrize("class_sizes", [[9] * 8, [7, 12, 9, 8, 15, 10, 9, 11]])
def test_split_evaluator_equals_the_straightforward_evaluation(class_sizes):
  split = _split(class_sizes)
  k, v, batch = 2, 5, 23
  sampler = episodes.EpisodeSampler(split, N, k, v, seed=0, stream="test")
  indices = sampler.sample_task_indices(0, batch)  # [B, N, K + V]
  problem = sampler.gather(indices)
  model = _model()
  _perturb(model)
  expected = model(problem, training=False).val_accuracy.numpy()
  assert len(set(expected.round(6))) > 1  # not a constant that any path would match
  for jit in (False, True):
    evaluator = evaluation.SplitEvaluator(model, split, k, jit_compile=jit)
    np.testing.assert_allclose(evaluator(indices).numpy(), expected, atol=1e-6)


def test_chunked_evaluations_see_the_same_tasks_whatever_the_chunk_size():
  split = _split([7, 12, 9, 8, 15, 10, 9, 11])
  sampler = evaluation.eval_sampler(DataConfig(num_classes=N, num_tr_examples_per_class=2),
                                    split, "test", seed=0)
  assert sampler.num_val_examples_per_class == 5  # every image of the smallest class (7) after K
  # A task holds 3 classes x (2 + 5) images x 8 floats x 4 bytes = 672 bytes; 1 MB holds 1560.
  assert evaluation.eval_chunk_size(1, sampler, 23) == 23
  assert evaluation.eval_chunk_size(1, sampler, 10 ** 6) == (1 << 20) // 672 == 1560
  num_tasks = 11
  tasks = sampler.sample_tasks(0, num_tasks)
  leo = _model()
  _perturb(leo)
  expected = leo(tasks, training=False).val_accuracy.numpy()
  assert len(set(expected.round(6))) > 1
  eval_step = evaluation.make_eval_step(leo, jit_compile=False)
  for chunk in (1, 4, num_tasks):
    np.testing.assert_allclose(evaluation.evaluate_tasks(eval_step, sampler, num_tasks, chunk),
                               expected, atol=1e-6, err_msg=f"chunk {chunk}")
  for batch_size in (1, 4, num_tasks, 64):  # LEO's fast path, chunks of batch_size tasks
    evaluate = evaluation.make_task_evaluator(leo, sampler, batch_size, eval_chunk_mb=1,
                                              jit_compile=False)
    np.testing.assert_allclose(evaluate(num_tasks), expected, atol=1e-6,
                               err_msg=f"batch_size {batch_size}")
  with pytest.raises(ValueError, match="num_tasks must be >= 1"):
    evaluate(0)
  # Meta-SGD gathers its tasks: the same tasks too.
  msgd = metasgd.MetaSGD(metasgd.MetaSGDConfig(embedding_dim=D, num_classes=N,
                                               num_inner_steps=1, inner_lr_init=1.0))
  msgd.initial_weights.assign(np.random.default_rng(7).normal(size=(N, D + 1)))
  expected = msgd(tasks, training=False).val_accuracy.numpy()
  assert len(set(expected.round(6))) > 1
  for batch_size in (1, 4, 64):
    evaluate = evaluation.make_task_evaluator(msgd, sampler, batch_size, eval_chunk_mb=1,
                                              jit_compile=False)
    np.testing.assert_allclose(evaluate(num_tasks), expected, atol=1e-6,
                               err_msg=f"batch_size {batch_size}")
