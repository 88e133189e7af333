"""The training command's flags and the run configurations they describe.

`python -m leo_tf.train` (and the benchmarks that train, leo_tf.bench.regression)
define these flags by importing this module; the flags keep the original
code's names and meanings (deepmind/leo, config.py), so its command lines carry
over. Only entry points import it: the library takes the frozen
configurations that config_from_flags and regression_config_from_flags build.
"""

from __future__ import annotations

from absl import flags

from leo_tf.classification import experiment as classification_experiment
from leo_tf.core.config import (ABLATIONS, KL_ESTIMATORS, WEIGHT_SAMPLINGS, DataConfig, ModelConfig,
                                OuterConfig)
from leo_tf.regression import experiment as regression_experiment
from leo_tf.regression import leo as regression_leo
from leo_tf.regression import maml as regression_maml
from leo_tf.regression import tasks as regression_tasks

# Data (original names).
flags.DEFINE_string("data_path", "data/embeddings",
                    "Folder holding <dataset_name>/<embedding_crop>/<split>_embeddings.pkl "
                    "(the unzipped LEO embeddings, or `python -m leo_tf.data.synthetic` output).")
flags.DEFINE_string("dataset_name", "miniImageNet",
                    "miniImageNet, tieredImageNet, or another folder in the same layout "
                    "(synthetic for the embedded default set).")
flags.DEFINE_string("embedding_crop", "center", "center or multiview (miniImageNet only).")
flags.DEFINE_boolean("train_on_val", False, "Meta-train on the train and val classes together.")
flags.DEFINE_integer("num_classes", 5, "N, as in N-way classification.")
flags.DEFINE_integer("num_tr_examples_per_class", 1, "K, as in K-shot: support examples per class.")
flags.DEFINE_integer("num_val_examples_per_class", 15,
                     "Query examples per class in meta-training (meta-validation and meta-test "
                     "use every remaining image of each class).")

# Model (original names).
flags.DEFINE_integer("inner_unroll_length", 5, "Latent adaptation steps (0: no adaptation).")
flags.DEFINE_integer("finetuning_unroll_length", 5, "Fine-tuning steps on the weights (0: none).")
flags.DEFINE_integer("num_latents", 64, "n_z, the size of the latent code.")
flags.DEFINE_float("inner_lr_init", 1.0, "Initial alpha, the learned latent-space learning rate.")
flags.DEFINE_float("finetuning_lr_init", 0.001, "Initial eta, the learned fine-tuning rate.")
flags.DEFINE_float("dropout_rate", 0.5, "Dropout on the features in meta-training.")
flags.DEFINE_float("kl_weight", 0.001, "beta in the paper: weight of the KL term.")
flags.DEFINE_float("encoder_penalty_weight", 1e-9, "gamma in the paper: weight of the encoder "
                   "penalty ||stopgrad(z') - z||^2.")
flags.DEFINE_float("l2_penalty_weight", 1e-8, "lambda_1 in the paper: weight of the L2 term.")
flags.DEFINE_float("orthogonality_penalty_weight", 1e-3,
                   "lambda_2 in the paper: weight of the decoder orthogonality penalty.")
flags.DEFINE_float("max_weights_stddev", 0.0,
                   "Soft upper bound on the decoder's weight stddev sigma^d (0: none, as the "
                   "original). Keeps exp(u) from overflowing in the inner loop (e.g. 10).")
flags.DEFINE_enum("kl_estimator", "sample", KL_ESTIMATORS,
                  "sample: the original's one-sample estimate; analytic: TFP's closed form.")
flags.DEFINE_enum("weight_sampling", "per_copy", WEIGHT_SAMPLINGS,
                  "How meta-training samples a class's weights for K > 1: per_copy, the "
                  "original's (a weight vector per support copy, averaged); class_mean: one draw "
                  "of that average's Gaussian per class (same first decoding, different noise in "
                  "the latent steps; see BUILD_NOTES.md). K = 1 and evaluation: identical.")
flags.DEFINE_enum("ablation", "leo", ABLATIONS, "A row of the paper's table 2.")
flags.DEFINE_enum("model", "leo", classification_experiment.MODEL_NAMES,
                  "leo; metasgd: Meta-SGD on the same features (adapts with "
                  "finetuning_unroll_length steps from finetuning_lr_init); prototypes: nearest "
                  "class mean, evaluated without training.")
flags.DEFINE_integer("embedding_dim", 640, "D, the size of the features.")

# Outer loop (original names).
flags.DEFINE_integer("metatrain_batch_size", 12, "Tasks per meta-training step.")
flags.DEFINE_integer("metavalid_batch_size", 200, "Tasks per meta-validation batch.")
flags.DEFINE_integer("metatest_batch_size", 200, "Tasks per meta-test batch.")
flags.DEFINE_integer("num_steps_limit", 100_000, "Meta-training steps.")
flags.DEFINE_float("outer_lr", 1e-4, "Adam's learning rate in the outer loop.")
flags.DEFINE_float("gradient_threshold", 0.1, "Clip each meta-gradient by value (<= 0: off).")
flags.DEFINE_float("gradient_norm_threshold", 0.1, "Then clip each by norm (<= 0: off).")
flags.DEFINE_string("checkpoint_path", "runs/leo",
                    "Where checkpoints, TensorBoard summaries and results go.")
flags.DEFINE_integer("checkpoint_steps", 1000, "Meta-validate and checkpoint every so many steps.")
flags.DEFINE_string("results_dir", "",
                    "Folder for results_<split>.json (default: --checkpoint_path), e.g. when the run "
                    "folder is read-only.")
flags.DEFINE_boolean("evaluation_mode", False,
                     "Evaluate the best checkpoint in checkpoint_path on meta-test; no training.")

# New flags.
flags.DEFINE_integer("seed", 0, "Seeds initialisation, sampling and episodes.")
flags.DEFINE_boolean("jit_compile", True, "Compile the steps with XLA.")
flags.DEFINE_integer("early_stopping_patience", 0,
                     "Stop after so many meta-validations without improvement (0: never).")
flags.DEFINE_integer("num_metavalid_tasks", 2000, "Tasks per meta-validation.")
flags.DEFINE_integer("num_metatest_tasks", 10_000, "Tasks in the meta-test evaluation.")
flags.DEFINE_integer("summary_steps", 10, "Write summaries and progress every so many steps.")
flags.DEFINE_integer("eval_chunk_mb", 256, "Memory bound (MB of features) per evaluation chunk.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute: default (one device), mirrored (all local GPUs, or "
                  "--num_cpu_devices logical CPUs) or multi_worker (the machines in TF_CONFIG).")
flags.DEFINE_integer("num_cpu_devices", 0,
                     "With strategy=mirrored on a machine without GPUs: split the CPU into so "
                     "many logical devices (replicas).")
flags.DEFINE_string("export_dir", None,
                    "If set, export the best checkpoint at the end of training as a SavedModel "
                    "version under this TF Serving model base path (python -m leo_tf.export).")

# Few-shot regression on sines and lines (section 4.1; leo_tf.regression.experiment,
# sines.flags). The model, outer-loop and run flags above keep their meaning
# there (K = --num_tr_examples_per_class; queries per meta-training task =
# --num_val_examples_per_class; --num_steps_limit and --outer_lr are LEO's);
# the data, embedding, dropout and distribution flags are unused. Its own:
flags.DEFINE_enum("problem", "classification", ["classification", "regression"],
                  "classification: N-way K-shot on embeddings; regression: sines and lines.")
flags.DEFINE_enum("regression_model", "both", ["leo", "maml", "both"],
                  "Regression models to train and evaluate (both: LEO, then MAML, same tasks).")
flags.DEFINE_integer("regression_num_samples", 1,
                     "S: codes (functions) sampled per task in meta-training.")
flags.DEFINE_enum("regression_query_loss", "samples", ["samples", "mean"],
                  "samples: mean query MSE of the S sampled functions; mean: query MSE of "
                  "their average.")
flags.DEFINE_integer("regression_num_eval_samples", 100,
                     "Sampled functions per held-out task in the final evaluation.")
flags.DEFINE_integer("regression_num_valid_samples", 20,
                     "Sampled functions per task in meta-validation.")
flags.DEFINE_integer("regression_num_eval_points", 100,
                     "Evenly spaced query inputs over [-5, 5] per held-out task.")
flags.DEFINE_integer("regression_eval_seed", 1, "Seeds the held-out tasks (not --seed).")
flags.DEFINE_float("regression_params_stddev_offset", 0.1,
                   "sigma^d = exp(u) - (1 - offset): the stddev of theta at u = 0.")
flags.DEFINE_float("regression_max_params_stddev", 1.0, "Soft upper bound on sigma^d.")
flags.DEFINE_float("regression_latent_clip", 5.0,
                   "The decoder reads c tanh(z / c), which keeps the inner loop finite.")
flags.DEFINE_float("regression_maml_inner_lr", 0.01, "alpha of the MAML baseline (fixed).")
flags.DEFINE_integer("regression_maml_inner_steps", 5, "MAML's inner gradient steps.")
flags.DEFINE_float("regression_maml_steps_ratio", 1.0,
                   "MAML's meta-training steps per LEO step: MAML trains this times "
                   "--num_steps_limit steps (sines.flags: 2.5, 20,000 for LEO's 8,000).")
flags.DEFINE_float("regression_maml_outer_lr", 1e-3, "MAML's Adam learning rate.")
flags.DEFINE_integer("regression_maml_batch_size", 25, "MAML's tasks per meta-training step.")

FLAGS = flags.FLAGS

# The configuration fields whose flag has another name, by --problem: error
# messages name a field; the command line names the flag (progress.command_error).
FLAG_NAMES = {
    "classification": {"model_name": "model"},
    "regression": {
        "num_samples": "regression_num_samples", "query_loss": "regression_query_loss",
        "params_stddev_offset": "regression_params_stddev_offset",
        "max_params_stddev": "regression_max_params_stddev",
        "latent_clip": "regression_latent_clip", "inner_lr": "regression_maml_inner_lr",
        "num_inner_steps": "regression_maml_inner_steps",
        "maml_steps_ratio": "regression_maml_steps_ratio",
        "maml_outer_lr": "regression_maml_outer_lr", "maml_batch_size": "regression_maml_batch_size",
        "num_eval_points": "regression_num_eval_points",
        "num_eval_samples": "regression_num_eval_samples",
        "num_valid_samples": "regression_num_valid_samples", "eval_seed": "regression_eval_seed",
        "num_tr_examples": "num_tr_examples_per_class",
        "num_val_examples": "num_val_examples_per_class",
    },
}


def config_from_flags() -> classification_experiment.RunConfig:
  """The frozen run configuration that the flags describe."""
  model = ModelConfig(
      embedding_dim=FLAGS.embedding_dim, num_latents=FLAGS.num_latents,
      inner_unroll_length=FLAGS.inner_unroll_length,
      finetuning_unroll_length=FLAGS.finetuning_unroll_length,
      inner_lr_init=FLAGS.inner_lr_init, finetuning_lr_init=FLAGS.finetuning_lr_init,
      dropout_rate=FLAGS.dropout_rate, kl_weight=FLAGS.kl_weight,
      encoder_penalty_weight=FLAGS.encoder_penalty_weight,
      l2_penalty_weight=FLAGS.l2_penalty_weight,
      orthogonality_penalty_weight=FLAGS.orthogonality_penalty_weight,
      max_weights_stddev=FLAGS.max_weights_stddev,
      kl_estimator=FLAGS.kl_estimator,
      weight_sampling=FLAGS.weight_sampling).with_ablation(FLAGS.ablation)
  data = DataConfig(
      data_path=FLAGS.data_path, dataset_name=FLAGS.dataset_name,
      embedding_crop=FLAGS.embedding_crop, train_on_val=FLAGS.train_on_val,
      num_classes=FLAGS.num_classes, num_tr_examples_per_class=FLAGS.num_tr_examples_per_class,
      num_val_examples_per_class=FLAGS.num_val_examples_per_class)
  outer = OuterConfig(
      metatrain_batch_size=FLAGS.metatrain_batch_size,
      metavalid_batch_size=FLAGS.metavalid_batch_size,
      metatest_batch_size=FLAGS.metatest_batch_size, num_steps_limit=FLAGS.num_steps_limit,
      outer_lr=FLAGS.outer_lr, gradient_threshold=FLAGS.gradient_threshold,
      gradient_norm_threshold=FLAGS.gradient_norm_threshold,
      checkpoint_path=FLAGS.checkpoint_path, checkpoint_steps=FLAGS.checkpoint_steps,
      num_metavalid_tasks=FLAGS.num_metavalid_tasks, num_metatest_tasks=FLAGS.num_metatest_tasks,
      early_stopping_patience=FLAGS.early_stopping_patience, seed=FLAGS.seed,
      jit_compile=FLAGS.jit_compile)
  return classification_experiment.RunConfig(
      model=model, data=data, outer=outer, summary_steps=FLAGS.summary_steps,
      eval_chunk_mb=FLAGS.eval_chunk_mb, progress=FLAGS.progress, model_name=FLAGS.model,
      strategy=FLAGS.strategy, results_dir=FLAGS.results_dir)


def regression_config_from_flags() -> regression_experiment.RegressionRunConfig:
  """The frozen regression run configuration that the flags describe."""
  model = regression_leo.RegressionConfig(
      num_latents=FLAGS.num_latents, inner_unroll_length=FLAGS.inner_unroll_length,
      finetuning_unroll_length=FLAGS.finetuning_unroll_length,
      inner_lr_init=FLAGS.inner_lr_init, finetuning_lr_init=FLAGS.finetuning_lr_init,
      num_samples=FLAGS.regression_num_samples, query_loss=FLAGS.regression_query_loss,
      params_stddev_offset=FLAGS.regression_params_stddev_offset,
      max_params_stddev=FLAGS.regression_max_params_stddev,
      latent_clip=FLAGS.regression_latent_clip, kl_weight=FLAGS.kl_weight,
      encoder_penalty_weight=FLAGS.encoder_penalty_weight,
      l2_penalty_weight=FLAGS.l2_penalty_weight,
      orthogonality_penalty_weight=FLAGS.orthogonality_penalty_weight,
      kl_estimator=FLAGS.kl_estimator)
  maml_config = regression_maml.MAMLConfig(inner_lr=FLAGS.regression_maml_inner_lr,
                                num_inner_steps=FLAGS.regression_maml_inner_steps)
  tasks = regression_tasks.SinusoidConfig(num_tr_examples=FLAGS.num_tr_examples_per_class,
                                  num_val_examples=FLAGS.num_val_examples_per_class)
  return regression_experiment.RegressionRunConfig(
      model=model, maml=maml_config, tasks=tasks, outer=config_from_flags().outer,
      maml_steps_ratio=FLAGS.regression_maml_steps_ratio,
      maml_outer_lr=FLAGS.regression_maml_outer_lr,
      maml_batch_size=FLAGS.regression_maml_batch_size,
      models=("leo", "maml") if FLAGS.regression_model == "both" else (FLAGS.regression_model,),
      num_eval_points=FLAGS.regression_num_eval_points,
      num_eval_samples=FLAGS.regression_num_eval_samples,
      num_valid_samples=FLAGS.regression_num_valid_samples,
      eval_seed=FLAGS.regression_eval_seed, summary_steps=FLAGS.summary_steps,
      progress=FLAGS.progress)
