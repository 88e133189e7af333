"""Figure 3 of the paper: LEO's sampled functions on held-out sines and lines, beside MAML."""

from __future__ import annotations

import numpy as np

from leo_tf.data import atomic
from leo_tf.regression import tasks as tasks_lib


def pick_figure_tasks(tasks: tasks_lib.RegressionTasks, params: tasks_lib.TaskParams,
                      noise_stddev: float) -> dict[str, list[int]]:
  """Indices of held-out tasks to draw: ambiguous sines, clear sines, lines (2 each).

  Ambiguous: sines of amplitude >= 1.5 whose five noisy points a straight line
  fits to within the noise (line_fit_rms <= noise_stddev), so that both
  families explain the data; the two that a line fits best. Clear sines: the
  first two whose line fit is off by more than 4 noise standard deviations.
  Lines: the first two line tasks. The choice is deterministic.
  """
  rms = tasks_lib.line_fit_rms(tasks)  # [N]
  sine = params.is_sine
  candidates = np.flatnonzero(sine & (params.amplitude >= 1.5) & (rms <= noise_stddev))
  ambiguous = candidates[np.argsort(rms[candidates], kind="stable")][:2]
  clear = np.flatnonzero(sine & (rms > 4 * noise_stddev))[:2]
  lines = np.flatnonzero(~sine)[:2]
  return {"ambiguous": ambiguous.tolist(), "sine": clear.tolist(), "line": lines.tolist()}


def draw_figure(path: str, tasks: tasks_lib.RegressionTasks, params: tasks_lib.TaskParams,
                predictions: dict[str, np.ndarray], task_config: tasks_lib.SinusoidConfig,
                steps: dict[str, int] | None = None, num_curves: int = 10
                ) -> dict[str, list[int]]:
  """Writes the figure-3-like PNG atomically; returns the drawn task indices by kind.

  Per panel: the noiseless function (black), the K noisy support points (red),
  `num_curves` of LEO's sampled functions (blue, thin), its 90% band (shaded)
  and, when evaluated, MAML's prediction (green, dashed). `steps` (model -> meta-training
  steps) goes into the title and the legend.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  def trained(name: str) -> str:  # " (8000 steps)": how long each model meta-trained
    return f" ({steps[name]} steps)" if steps and name in steps else ""

  chosen = pick_figure_tasks(tasks, params, task_config.noise_stddev)
  panels = [(kind, i) for kind in ("ambiguous", "sine", "line") for i in chosen[kind]]
  if not panels:
    raise ValueError("No held-out task to draw; raise num_metatest_tasks.")
  grid = tasks.val_input[0, :, 0]  # [M], the same grid for every task
  leo = predictions["leo"]  # [N, S, M, 1]
  columns = 3
  rows = -(-len(panels) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
  titles = {"ambiguous": "ambiguous: sine, a line fits too", "sine": "sine", "line": "line"}
  for ax, (kind, i) in zip(axes.ravel(), panels):
    low, high = np.percentile(leo[i, :, :, 0], [5, 95], axis=0)  # [M] each
    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.15, lw=0,
                    label="LEO 90% band")
    for s in range(min(num_curves, leo.shape[1])):
      ax.plot(grid, leo[i, s, :, 0], color="tab:blue", lw=0.7, alpha=0.6,
              label="LEO samples" if s == 0 else None)
    if "maml" in predictions:
      ax.plot(grid, predictions["maml"][i, 0, :, 0], color="tab:green", lw=1.4, ls="--",
              label=f"MAML{trained('maml')}")
    ax.plot(grid, tasks.val_target[i, :, 0], color="black", lw=1.8, label="true function")
    ax.scatter(tasks.tr_input[i, :, 0], tasks.tr_output[i, :, 0], color="tab:red", zorder=5,
               s=28, label=f"{tasks.tr_input.shape[1]} noisy points")
    if params.is_sine[i]:
      desc = f"A={params.amplitude[i]:.2f}, phi={params.phase[i]:.2f}"
    else:
      desc = f"a={params.slope[i]:.2f}, b={params.intercept[i]:.2f}"
    ax.set_title(f"task {i} ({titles[kind]})\n{desc}", fontsize=9)
    ax.set_xlim(*task_config.input_range)
    ax.grid(alpha=0.3)
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  axes.ravel()[0].legend(fontsize=7, loc="best")
  fig.suptitle(f"LEO{trained('leo')} on held-out {task_config.num_tr_examples}-shot sines and lines: "
               f"{min(num_curves, leo.shape[1])} of {leo.shape[1]} sampled functions", fontsize=11)
  fig.tight_layout()
  atomic.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)
  return chosen
