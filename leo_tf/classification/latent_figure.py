r"""Figure 4 of the paper: latent codes before and after adaptation, in 2-D.

    python -m leo_tf.classification.latent_figure --checkpoint_path=runs/omniglot/5way1shot/leo \
        --output=runs/omniglot/latents.png

Restores the best checkpoint of a LEO run (its settings come from the run's
config.json), encodes `num_tasks` meta-validation tasks (evaluation mode: the
means of q(z | D^tr), no dropout), adapts them, and plots the codes z (before)
and z' (after latent adaptation), projected to two dimensions by PCA fitted on
both sets together:

  (a) every code of every task, before and after;
  (b) the same projection for a few tasks (about 100 codes), an arrow from each
      code to its adapted code (what adaptation does to each class of a task);
  (c) the norm of the change ||z' - z|| relative to ||z||, over all codes.

The query accuracy of the same tasks is measured twice, with the adapted
codes (the full model) and with the codes as encoded (the same weights with no
latent adaptation and no fine-tuning), and written in the figure's title and in
a JSON file beside the PNG, with the PCA's explained variance.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from leo_tf.data import embeddings
from leo_tf.data import episodes
from leo_tf.classification import evaluation
from leo_tf.classification import experiment
from leo_tf.outer import checkpoints
from leo_tf.outer import progress


def load_run_config(checkpoint_path: str, data_path: str | None = None) -> experiment.RunConfig:
  """The RunConfig that a training run wrote to <checkpoint_path>/config.json.

  Its checkpoint_path becomes `checkpoint_path` (the run may have been moved),
  and its data_path `data_path` when given.
  """
  path = os.path.join(checkpoint_path, "config.json")
  if not os.path.isfile(path):
    raise ValueError(
        f"{path}: no such file; checkpoint_path must be a LEO training run's folder "
        "(python -m leo_tf.train --checkpoint_path=...).")
  with open(path) as f:
    config = experiment.RunConfig.from_dict(json.load(f))
  data = config.data if data_path is None else dataclasses.replace(config.data,
                                                                   data_path=data_path)
  return dataclasses.replace(config, data=data, outer=dataclasses.replace(
      config.outer, checkpoint_path=checkpoint_path))


def collect_codes(config: experiment.RunConfig, split: str = "val", num_tasks: int = 1000,
                  chunk_size: int = 100) -> dict[str, np.ndarray]:
  """Codes of the first num_tasks tasks of `split` (the evaluation tasks of classification.experiment).

  Returns:
    latents: float32 [T, N, K, n_z], z as encoded (the mean of q(z | D^tr));
    adapted_latents: float32 [T, N, K, n_z], z' after latent adaptation;
    accuracy: float [T] query accuracy of the full model;
    accuracy_before: float [T] query accuracy without latent adaptation and
      fine-tuning (weights decoded from z).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from leo_tf.classification.leo import LEO  # pylint: disable=g-import-not-at-top
  if config.model_name != "leo":
    raise ValueError(f"The latent figure needs a LEO run; {config.outer.checkpoint_path!r} "
                     f"holds a {config.model_name!r} run.")
  model = LEO(config.model, seed=config.outer.seed)
  no_adaptation = LEO(dataclasses.replace(config.model, inner_unroll_length=0,
                                          finetuning_unroll_length=0), seed=config.outer.seed)
  for m in (model, no_adaptation):
    checkpoints.restore_best(m, config.outer.checkpoint_path,
                             os.path.join(config.outer.checkpoint_path, checkpoints.CONFIG_FILE))
  split_data = embeddings.load_split(config.data, split, config.model.embedding_dim)
  sampler = evaluation.eval_sampler(config.data, split_data, split, config.outer.seed)

  @tf.function(reduce_retracing=True, autograph=False)
  def run(problem):
    full = model(problem, training=False)
    before = no_adaptation(problem, training=False)
    return full.latents, full.adapted_latents, full.val_accuracy, before.val_accuracy

  parts = [run(episodes.ProblemInstance(*chunk))
           for chunk in episodes.iterate_tasks(sampler, num_tasks, chunk_size)]
  names = ("latents", "adapted_latents", "accuracy", "accuracy_before")
  return {name: np.concatenate([p[i].numpy() for p in parts], axis=0)
          for i, name in enumerate(names)}


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Projects float [M, d] onto its first two principal components.

  Returns:
    (projected [M, 2], components [2, d] (unit rows), explained variance ratio [2]).
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 2:
    raise ValueError(f"points must be [M, d] with M, d >= 2, got shape {points.shape}.")
  centred = points - points.mean(axis=0, keepdims=True)  # [M, d]
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)  # vt [min(M,d), d]
  components = vt[:2]  # [2, d]
  # Fix the sign: the largest-magnitude entry of each component is positive.
  signs = np.sign(components[np.arange(2), np.argmax(np.abs(components), axis=1)])  # [2]
  components = components * signs[:, None]
  variance = singular ** 2
  return centred @ components.T, components, variance[:2] / variance.sum(axis=0)  # [M, 2]


def plot(codes: dict[str, np.ndarray], path: str, title: str = "") -> dict[str, Any]:
  """Writes the PNG at `path` and returns the numbers it shows."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  before, after = codes["latents"], codes["adapted_latents"]  # [T, N, K, n_z] each
  t, n, k, n_z = before.shape
  flat_before = before.reshape(-1, n_z)  # [T*N*K, n_z]
  flat_after = after.reshape(-1, n_z)  # [T*N*K, n_z]
  projected, _, explained = pca_2d(np.concatenate([flat_before, flat_after], axis=0))
  p_before, p_after = projected[:flat_before.shape[0]], projected[flat_before.shape[0]:]
  change = np.linalg.norm(flat_after - flat_before, axis=1) / np.maximum(
      np.linalg.norm(flat_before, axis=1), 1e-12)  # [T*N*K]
  summary = {
      "num_tasks": int(t), "num_classes": int(n), "num_shots": int(k), "num_latents": int(n_z),
      "accuracy_adapted": float(np.mean(codes["accuracy"])),
      "accuracy_before_adaptation": float(np.mean(codes["accuracy_before"])),
      "relative_change_median": float(np.median(change)),
      "pca_explained_variance": [float(e) for e in explained],
      "spread_before": float(np.mean(np.std(flat_before, axis=0))),
      "spread_after": float(np.mean(np.std(flat_after, axis=0))),
  }

  fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
  ax = axes[0]
  # The codes after adaptation first, so the (usually tighter) codes before stay visible on top.
  ax.scatter(p_after[:, 0], p_after[:, 1], s=2, alpha=0.35, c="tab:orange",
             label="after adaptation (z')", rasterized=True, zorder=1)
  ax.scatter(p_before[:, 0], p_before[:, 1], s=2, alpha=0.35, c="tab:blue",
             label="before adaptation (z)", rasterized=True, zorder=2)
  ax.set_title(f"(a) {t} tasks x {n} classes x {k} shots")
  ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
  ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)")
  ax.legend(markerscale=6, loc="best")

  ax = axes[1]
  per_task = n * k
  shown = min(t, max(1, 100 // per_task))
  colors = plt.cm.tab10(np.arange(n) % 10)  # one colour per class slot of a task
  for task in range(shown):
    for code in range(per_task):
      i = task * per_task + code
      ax.annotate("", xy=p_after[i], xytext=p_before[i],
                  arrowprops=dict(arrowstyle="->", color=colors[code // k], lw=0.8, alpha=0.8))
  rows = slice(0, shown * per_task)
  ax.scatter(p_before[rows, 0], p_before[rows, 1], s=6, c="tab:blue", zorder=3)
  ax.scatter(p_after[rows, 0], p_after[rows, 1], s=6, c="tab:orange", zorder=3)
  ax.set_title(f"(b) {shown} tasks: z -> z' (colour: class slot)")
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")

  ax = axes[2]
  ax.hist(change, bins=60, color="tab:gray")
  ax.set_title(f"(c) ||z' - z|| / ||z||, median {summary['relative_change_median']:.2f}")
  ax.set_xlabel("relative change of a code")
  ax.set_ylabel("codes")
  fig.suptitle(
      f"{title}  query accuracy: {100 * summary['accuracy_before_adaptation']:.1f}% from z, "
      f"{100 * summary['accuracy_adapted']:.1f}% after adaptation")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return summary


def make_figure(checkpoint_path: str, output: str, num_tasks: int = 1000,
                split: str = "val", data_path: str | None = None) -> dict[str, Any]:
  """Collects the codes of a LEO run and writes the PNG and <output>.json; returns the summary."""
  config = load_run_config(checkpoint_path, data_path)
  codes = collect_codes(config, split, num_tasks)
  d = config.data
  summary = plot(codes, output, title=f"LEO latent codes, {d.dataset_name} {d.num_classes}-way "
                 f"{d.num_tr_examples_per_class}-shot, meta-{split}.")
  summary.update(checkpoint_path=checkpoint_path, split=split, figure=output)
  with open(os.path.splitext(output)[0] + ".json", "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write("\n")
  return summary


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  progress.start_command(argv, "leo_tf.classification.latent_figure")
  f = flags.FLAGS
  try:
    summary = make_figure(f.checkpoint_path, f.output, f.num_tasks, f.split, f.data_path)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"leo_tf.classification.latent_figure: error: {e}") from None
  print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint_path", None, "A LEO training run's folder.", required=True)
  flags.DEFINE_string("output", "latents.png", "The PNG to write (and <output>.json).")
  flags.DEFINE_integer("num_tasks", 1000, "Tasks to encode and adapt.")
  flags.DEFINE_enum("split", "val", ["train", "val", "test"], "Which classes the tasks use.")
  flags.DEFINE_string("data_path", None, "Embeddings folder, if not the run's own data_path.")
  app.run(main, flags_parser=progress.flags_parser("leo_tf.classification.latent_figure"))
