"""N-way K-shot classification on embeddings: meta-train, then meta-test the best checkpoint.

`train(config)` meta-trains the learner that config.model_name names (LEO,
Meta-SGD, or nothing for the nearest class mean) with the one fit loop
(outer.fit), resuming from the last checkpoint in `checkpoint_path` when there
is one, and evaluates the best checkpoint on meta-test; `evaluate(config)` is
the `--evaluation_mode` path. Both return a results dictionary and write it as
JSON beside the checkpoints.

Layout of `checkpoint_path` (outer.checkpoints):
  config.json             the run's configuration (written once; checked on resume)
  ckpt/, best/            latest checkpoints; the best by meta-validation accuracy
  train/, valid/          TensorBoard summaries
  results_<split>.json    meta-test accuracy with its 95% confidence interval
                          (results_<split>_<N>tasks.json for an evaluation of another size)

Episodes for step s come from np.random.default_rng([seed, stream, s]) and the
learner's samples and dropout from the stateless seed (seed, s), so an
interrupted run restarted with the same flags ends with the same weights as
an uninterrupted one (tested).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import tensorflow as tf

from leo_tf.classification import evaluation
from leo_tf.classification import metasgd
from leo_tf.classification import prototypes
from leo_tf.classification.leo import LEO
from leo_tf.core import statistics
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig, check_at_least, check_choice
from leo_tf.data import embeddings
from leo_tf.data import episodes
from leo_tf.data.episodes import ProblemInstance
from leo_tf.outer import checkpoints
from leo_tf.outer import distribute
from leo_tf.outer import fit as fit_lib
from leo_tf.outer import lock
from leo_tf.outer import step as outer_step

PROBLEM = "classification"
# --model: LEO, or a baseline on the same features through the same contract.
MODEL_NAMES = ("leo", "metasgd", "prototypes")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one classification run needs."""

  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  outer: OuterConfig = OuterConfig()
  summary_steps: int = 10  # TensorBoard and progress every so many steps
  eval_chunk_mb: int = 256  # evaluation memory bound: features per chunk of tasks
  progress: bool = True  # progress bar on stderr
  model_name: str = "leo"  # leo, metasgd (Meta-SGD) or prototypes (nearest class mean)
  strategy: str = "default"  # tf.distribute: default, mirrored or multi_worker
  results_dir: str = ""  # where results_<split>.json goes ("": checkpoint_path)

  # Settings that, changed between a run and its resumption, make the checkpoint
  # meaningless or the resumed run different from an uninterrupted one.
  RESUME_FIELDS = {
      "model": [f.name for f in dataclasses.fields(ModelConfig)],
      "data": ["dataset_name", "embedding_crop", "train_on_val", "num_classes",
               "num_tr_examples_per_class", "num_val_examples_per_class"],
      "outer": ["metatrain_batch_size", "outer_lr", "gradient_threshold",
                "gradient_norm_threshold", "seed", "jit_compile"],
      "": ["model_name"],
  }

  def __post_init__(self):
    check_choice(self, "strategy", distribute.STRATEGIES)
    check_choice(self, "model_name", MODEL_NAMES)
    check_at_least(self, 1, "summary_steps", "eval_chunk_mb")

  def to_dict(self) -> dict[str, Any]:
    return {"problem": PROBLEM, **dataclasses.asdict(self)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
    """The inverse of to_dict (a config.json of before "problem" existed reads too)."""
    return cls(model=ModelConfig(**d["model"]), data=DataConfig(**d["data"]),
               outer=OuterConfig(**d["outer"]),
               **{k: v for k, v in d.items() if k not in ("model", "data", "outer", "problem")})


def build_learner(config: RunConfig):
  """The MetaLearner that config.model_name selects, initialised from the run seed."""
  if config.model_name == "metasgd":
    return metasgd.MetaSGD(
        metasgd.MetaSGDConfig.from_model_config(config.model, config.data.num_classes))
  if config.model_name == "prototypes":
    return prototypes.Prototypes(prototypes.PrototypesConfig(config.model.embedding_dim))
  return LEO(config.model, seed=config.outer.seed)


def _batches(config: RunConfig, train_split: embeddings.EmbeddingSplit,
             strategy: tf.distribute.Strategy):
  """start_step -> the meta-training batches of steps start_step .. num_steps_limit - 1.

  On one device, a prefetched tf.data pipeline of the "train" stream; under a
  strategy of R replicas, each replica draws B / R tasks of its own stream
  "train/replica-r".
  """
  d, o = config.data, config.outer
  k, v = d.num_tr_examples_per_class, d.num_val_examples_per_class
  num_replicas = strategy.num_replicas_in_sync
  if num_replicas == 1 and config.strategy == "default":
    sampler = episodes.EpisodeSampler(train_split, d.num_classes, k, v, seed=o.seed,
                                      stream="train")
    return lambda start: (ProblemInstance(*p) for p in episodes.make_dataset(
        sampler, o.metatrain_batch_size, start, o.num_steps_limit - start))
  samplers = [episodes.EpisodeSampler(train_split, d.num_classes, k, v, seed=o.seed,
                                      stream=f"train/replica-{r}") for r in range(num_replicas)]
  per_replica = o.metatrain_batch_size // num_replicas
  return lambda start: (distribute.split_for_replicas(
      strategy, lambda r, s=s: ProblemInstance(*samplers[r].sample(s, per_replica)))
                        for s in range(start, o.num_steps_limit))


def train(config: RunConfig) -> dict[str, Any]:
  """Meta-trains, keeps the best checkpoint, evaluates it on meta-test.

  Returns:
    The meta-test results (see `evaluate`) plus where everything was written;
    on a non-chief worker of a multi-worker run, {"chief": False, ...}.
  """
  d, o = config.data, config.outer
  if config.model_name == "prototypes":
    # Nothing to meta-train: meta-validate and meta-test the nearest class mean.
    evaluate(config, "val")
    return evaluate(config)
  train_split = embeddings.load_split(d, "train", config.model.embedding_dim)
  val_split = embeddings.load_split(d, "val", config.model.embedding_dim)
  # Every split the run reads is opened and checked now, not after hours of training
  # (the test split is read again for the meta-test, so it is not held meanwhile).
  embeddings.load_split(d, "test", config.model.embedding_dim)
  val_sampler = evaluation.eval_sampler(d, val_split, "val", o.seed)
  strategy = distribute.make_strategy(config.strategy)
  num_replicas = strategy.num_replicas_in_sync
  if o.metatrain_batch_size % num_replicas:
    raise ValueError(f"metatrain_batch_size {o.metatrain_batch_size} must be a multiple of the "
                     f"{num_replicas} replicas of strategy={config.strategy}.")
  run = checkpoints.RunState(o.checkpoint_path, lambda: build_learner(config), o, strategy)
  if not run.chief:
    return _fit_and_meta_test(config, run, train_split, val_split, val_sampler, strategy)
  with lock.RunLock(o.checkpoint_path, "training"):  # one writer per run folder
    checkpoints.check_resume_config(o.checkpoint_path, config)
    return _fit_and_meta_test(config, run, train_split, val_split, val_sampler, strategy)


def _fit_and_meta_test(config: RunConfig, run: checkpoints.RunState, train_split, val_split,
                       val_sampler, strategy) -> dict[str, Any]:
  """train()'s fit and meta-test, once the run's state is built (on the chief, locked)."""
  d, o = config.data, config.outer
  num_replicas = strategy.num_replicas_in_sync
  if num_replicas == 1 and config.strategy == "default":
    train_step = outer_step.make_train_step(run.model, run.optimizer, o)
  else:
    train_step = distribute.make_distributed_train_step(run.model, run.optimizer, o, strategy)
  evaluate_val = evaluation.make_task_evaluator(
      run.model, val_sampler, o.metavalid_batch_size, eval_chunk_mb=config.eval_chunk_mb,
      jit_compile=o.jit_compile)
  spec = fit_lib.FitSpec(
      intro=(f"{d.num_classes}-way {d.num_tr_examples_per_class}-shot on {d.dataset_name}/"
             f"{d.embedding_crop} ({train_split.num_classes} train classes, "
             f"{val_split.num_classes} validation classes), meta-batch "
             f"{o.metatrain_batch_size}."),
      describe=lambda m: f"loss {m['loss']:.3f} acc {100 * m['accuracy']:.1f}%",
      nan_hint="bound the weight stddev (--max_weights_stddev, e.g. 10) or lower "
               "--inner_lr_init",
      summary_steps=config.summary_steps, progress=config.progress)
  report = fit_lib.fit(
      run, train_step, _batches(config, train_split, strategy),
      lambda: fit_lib.Validation(evaluate_val(o.num_metavalid_tasks), {}, ""), o, spec)
  if not run.chief:
    run.remove_scratch()
    return {"chief": False, "step": report.final_step,
            "weights_checksum": report.weights_checksum}
  results = evaluate(config)
  results["weights_checksum"] = report.weights_checksum
  results.update(stopped_early=report.stopped_early, nan_fallbacks=report.nan_fallbacks,
                 checkpoints=os.path.join(o.checkpoint_path, "ckpt"),
                 best_checkpoint=os.path.join(o.checkpoint_path, "best"),
                 summaries=o.checkpoint_path)
  print(f"Checkpoints: {results['checkpoints']}\nBest checkpoint: {results['best_checkpoint']}\n"
        f"TensorBoard: tensorboard --logdir {o.checkpoint_path}\nResults: "
        f"{results['results_file']}", flush=True)
  return results


def evaluate(config: RunConfig, split: str = "test") -> dict[str, Any]:
  """Evaluates the best checkpoint on `split` (num_metatest_tasks tasks).

  Returns and writes (results_<split>.json beside the checkpoints) the mean
  accuracy and its 95% confidence interval 1.96 sd / sqrt(n).
  """
  if config.results_dir:  # writes elsewhere: the run folder is only read
    return _evaluate(config, split)
  with lock.RunLock(config.outer.checkpoint_path, f"evaluation on {split}", create=False):
    return _evaluate(config, split)


def _evaluate(config: RunConfig, split: str) -> dict[str, Any]:
  """evaluate() once the folder it writes into is locked (or is another folder)."""
  d, o = config.data, config.outer
  model = build_learner(config)
  prefix, record = checkpoints.restore_best(
      model, o.checkpoint_path, os.path.join(o.checkpoint_path, checkpoints.CONFIG_FILE))
  eval_split = embeddings.load_split(d, split, config.model.embedding_dim)
  sampler = evaluation.eval_sampler(d, eval_split, split, o.seed)
  evaluate_split = evaluation.make_task_evaluator(
      model, sampler, o.metatest_batch_size, eval_chunk_mb=config.eval_chunk_mb,
      jit_compile=o.jit_compile)
  t0 = time.time()
  accuracies = evaluate_split(o.num_metatest_tasks)
  seconds = time.time() - t0
  mean, ci, sd = statistics.confidence_interval(accuracies)
  results_file = checkpoints.results_path(config.results_dir or o.checkpoint_path, split,
                                          int(accuracies.size))
  queries = sampler.num_val_examples_per_class
  results = {
      "split": split, "model_name": config.model_name, "dataset_name": d.dataset_name,
      "embedding_crop": d.embedding_crop,
      "num_classes": d.num_classes, "num_tr_examples_per_class": d.num_tr_examples_per_class,
      "num_val_examples_per_class": queries,
      "queries": (f"every remaining image of each class: {queries} per class (the smallest "
                  f"class's size minus K), as the original evaluates; --num_val_examples_per_"
                  f"class ({d.num_val_examples_per_class}) sets meta-training's queries only"),
      "num_tasks": int(accuracies.size), "mean_accuracy": mean, "ci95": ci, "sd": sd,
      "checkpoint": prefix, "checkpoint_step": record["step"],
      "metavalid_accuracy": record["metavalid_accuracy"], "seconds": seconds,
      "results_file": results_file,
  }
  print(f"meta-{split} accuracy {100 * mean:.2f}% +- {100 * ci:.2f}% (95% CI) over "
        f"{accuracies.size} {d.num_classes}-way {d.num_tr_examples_per_class}-shot tasks with "
        f"{queries} queries per class ({config.model_name}, best checkpoint step "
        f"{record['step']}); writing {results_file}", flush=True)
  checkpoints.write_results(results_file, results)
  return results
