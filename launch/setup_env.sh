#!/usr/bin/env bash
# Creates a virtual environment if missing and installs the pinned dependencies and the project into it.
#   launch/setup_env.sh          .venv: the runtime requirements only (what `pip install elip_jax` gives; the demo)
#   launch/setup_env.sh test     .venv-test: runtime + test/conversion dependencies (torch CPU, transformers,
#                                TensorFlow CPU, open_clip, clip-benchmark)
# Two separate environments, so that a test dependency can never hide a missing runtime one.
# Every pinned file is installed with --no-deps: the pins are a complete, consistent closure, and this keeps
# pip from pulling CUDA torch or torchvision through open_clip's declared dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
case "$profile" in
  runtime) venv=.venv; files=(requirements/runtime.txt) ;;
  test) venv=.venv-test; files=(requirements/runtime.txt requirements/test.txt requirements/open_clip.txt) ;;
  *) echo "error: unknown profile '$profile': expected runtime or test" >&2; exit 2 ;;
esac

pip_quietly() {  # pip, without the warnings some machines' pip configuration prints for every package, nor
  # setuptools' banner about editable installs (the checkout is meant to take precedence)
  "$venv/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.installed-$profile"
digest=$(cat "${files[@]}" setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  pip_quietly install --upgrade "pip>=24" setuptools wheel
  for f in "${files[@]}"; do
    pip_quietly install --no-deps -r "$f"
  done
  PYTHONWARNINGS="ignore::UserWarning" pip_quietly install --no-deps --no-build-isolation -e .
  # from outside the checkout, so that the installed package is what imports
  (cd / && "$OLDPWD/$venv/bin/python" -c "import elip_jax") \
    || { echo "installation failed: elip_jax does not import from $venv" >&2; exit 1; }
  echo "$digest" > "$stamp"
fi
