#!/usr/bin/env bash
# Builds leo_serve (leo_serve.c) against the TensorFlow C API of the installed tensorflow wheel:
#
#   export/c_loader/build.sh [output]      (default: export/c_loader/leo_serve)
#
# The headers are the wheel's tensorflow/include; leo_serve loads the wheel's
# libtensorflow_cc.so.2 (and with it libtensorflow_framework.so.2) from that folder when it starts
# (dlopen; linking against the 1 GB library would take ld half a minute). PYTHON
# (default: python3) names the interpreter whose tensorflow is used; CC (default: cc) the compiler.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
output="${1:-$here/leo_serve}"
python="${PYTHON:-python3}"
cc="${CC:-cc}"
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "build.sh: no C compiler ($cc): install one, e.g. as root on Debian or Ubuntu" \
       "'apt-get install -y build-essential', or name another with CC=..." >&2
  exit 3
fi
# Where tensorflow is, without importing it (which takes seconds).
tf_dir="$("$python" -c 'import importlib.util, sys
spec = importlib.util.find_spec("tensorflow")
sys.exit("no tensorflow package for this python") if spec is None else print(spec.submodule_search_locations[0])')"
for lib in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
  if [ ! -e "$tf_dir/$lib" ]; then
    echo "build.sh: $tf_dir has no $lib: install the tensorflow wheel (pip install tensorflow)" >&2
    exit 4
  fi
done
"$cc" -std=c11 -O2 -Wall -Wextra -o "$output" "$here/leo_serve.c" -I"$tf_dir/include" \
  -DTENSORFLOW_DIR="\"$tf_dir\"" -ldl
echo "$output"
