r"""Write the JSON body of a TF Serving REST predict request for one few-shot task.

From your own embeddings (an .npz with support [N, K, D] and query [Q, D]):

    python export/make_request.py --input=/tmp/task.npz --output=/tmp/request.json

or random ones, only to try a server (request.json in this folder was made so):

    python export/make_request.py --embedding_dim=640 --num_classes=2 --num_shots=1 \
        --num_queries=2 --seed=0 --output=export/request.json

Each prints one line saying what it wrote, e.g.

    make_request: wrote /tmp/request.json: serving_default request, support [N, K, D] =
    [5, 1, 640], query [Q, D] = [75, 640]

(on stderr when the body goes to stdout), then

    curl -s -X POST -H 'Content-Type: application/json' -d @/tmp/request.json \
        http://localhost:8501/v1/models/leo:predict

The body uses the columnar ("inputs") format, so the answer is
{"outputs": {"probabilities": [Q][N], "classes": [Q], ...}}. Needs only numpy.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app
from absl import flags
import numpy as np

SIGNATURES = ("serving_default", "generate")


def rest_request(support: np.ndarray, query: np.ndarray,
                 signature_name: str = "serving_default",
                 decimals: int | None = None) -> dict[str, Any]:
  """The request body: {"signature_name": ..., "inputs": {"support": [N][K][D], "query": [Q][D]}}.

  Args:
    support: [N, K, D] raw embeddings, class n in row n.
    query: [Q, D] raw embeddings.
    signature_name: serving_default (with adaptation) or generate.
    decimals: round the numbers to so many decimals (smaller files), or None.
  """
  support = np.asarray(support, np.float32)  # [N, K, D]
  query = np.asarray(query, np.float32)  # [Q, D]
  if support.ndim != 3 or query.ndim != 2:
    raise ValueError(f"support must be [N, K, D] and query [Q, D]; got shapes {support.shape} "
                     f"and {query.shape}.")
  # float32 -> float64 Python floats: without rounding, the JSON holds the float32
  # values exactly (TF Serving parses them back to the same float32).
  support, query = support.astype(np.float64), query.astype(np.float64)
  if decimals is not None:
    support, query = np.round(support, decimals), np.round(query, decimals)
  return {"signature_name": signature_name,
          "inputs": {"support": support.tolist(), "query": query.tolist()}}


def random_task(embedding_dim: int, num_classes: int, num_shots: int, num_queries: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-negative random features (like post-ReLU CNN features): [N, K, D], [Q, D]."""
  rng = np.random.default_rng(seed)
  support = rng.uniform(0.0, 1.0, (num_classes, num_shots, embedding_dim)).astype(np.float32)
  query = rng.uniform(0.0, 1.0, (num_queries, embedding_dim)).astype(np.float32)
  return support, query


def dumps(body: dict[str, Any]) -> str:
  """Compact JSON, one line, with a final newline."""
  return json.dumps(body, separators=(",", ":")) + "\n"


def summary(output: str, signature_name: str, support: np.ndarray, query: np.ndarray) -> str:
  """The line printed on success: where the body went, its signature and shapes.

  Args:
    output: the file written, or "" for stdout.
    signature_name: the body's signature_name.
    support: [N, K, D] as sent.
    query: [Q, D] as sent.
  """
  n, k, d = np.shape(support)
  q = np.shape(query)[0]
  where = output or "stdout"
  return (f"make_request: wrote {where}: {signature_name} request, support [N, K, D] = "
          f"[{n}, {k}, {d}], query [Q, D] = [{q}, {d}]")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags look like --name=value).")
  f = flags.FLAGS
  if f.input:
    with np.load(f.input, allow_pickle=False) as data:
      support, query = data["support"], data["query"]
    decimals = None
  else:
    support, query = random_task(f.embedding_dim, f.num_classes, f.num_shots, f.num_queries,
                                 f.seed)
    decimals = 3
  try:
    text = dumps(rest_request(support, query, f.signature_name, decimals))
  except ValueError as e:
    sys.exit(f"make_request: error: {e}")
  if f.output:
    with open(f.output, "w") as out:
      out.write(text)
    print(summary(f.output, f.signature_name, support, query))
  else:  # the body alone on stdout, the line on stderr
    sys.stdout.write(text)
    print(summary("", f.signature_name, support, query), file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_string("input", "", "An .npz with support [N, K, D] and query [Q, D]; "
                      "empty: random features of the shape below.")
  flags.DEFINE_string("output", "", "Where to write the JSON body (empty: stdout).")
  flags.DEFINE_enum("signature_name", "serving_default", SIGNATURES, "The signature to call.")
  flags.DEFINE_integer("embedding_dim", 640, "D of the random features (the model's D).")
  flags.DEFINE_integer("num_classes", 2, "N of the random task.")
  flags.DEFINE_integer("num_shots", 1, "K of the random task.")
  flags.DEFINE_integer("num_queries", 2, "Q of the random task.")
  flags.DEFINE_integer("seed", 0, "Seed of the random features.")
  app.run(main)
