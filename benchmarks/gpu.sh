#!/usr/bin/env bash
# Issue 13's GPU measurements in one call (benchmarks/gpu.py says what they are), on the GPU machine's image:
#   ./benchmarks/gpu.sh OUT_DIR [benchmarks/gpu.py options]
# elip_jax runs from this working tree (PYTHONPATH), nothing is installed into the image's Python and nothing is
# downloaded: open_clip and the pure-Python parts of its dependencies that the image lacks are installed from the
# wheels carried in .whl/ into a private folder (fill it on a machine with a package index:
#   pip download --no-deps -d .whl/ open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl/ regex
# ). A wheel that is missing or does not install is reported; the open_clip section then records why it failed.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: benchmarks/gpu.sh OUT_DIR [benchmarks/gpu.py options]" >&2; exit 2; }
python=${PYTHON:-$(command -v python3 || command -v python)}
site="${TMPDIR:-/tmp}/elip_jax_gpu_benchmark_site"
mkdir -p "$site"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"

wheels=()
for pair in open_clip:open_clip_torch ftfy:ftfy wcwidth:wcwidth regex:regex; do
  module=${pair%%:*}
  project=${pair##*:}
  if "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2>/dev/null; then
    continue
  fi
  found=$(ls .whl/"$project"-*.whl 2>/dev/null | head -n 1)
  if [ -n "$found" ]; then
    wheels+=("$found")
  else
    echo "gpu.sh: $module is not importable and no .whl/$project-*.whl was carried" >&2
  fi
done
if [ ${#wheels[@]} -gt 0 ]; then
  echo "gpu.sh: installing ${wheels[*]} into $site" >&2
  if ! "$python" -m pip install --no-deps --no-index --quiet --disable-pip-version-check --target "$site" \
      "${wheels[@]}"; then
    # without pip: a wheel is a zip laid out as site-packages expects
    echo "gpu.sh: pip failed; unpacking the wheels instead" >&2
    "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$site" "${wheels[@]}" || echo "gpu.sh: could not unpack the wheels; the open_clip sections will say why" >&2
  fi
fi
"$python" -c "import sys; print('gpu.sh: python', sys.version.split()[0])" >&2
exec "$python" benchmarks/gpu.py "$@"
