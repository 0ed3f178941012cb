#!/usr/bin/env bash
# Creates ./.venv if missing and installs the pinned dependencies and the project into it.
#   launch/setup_env.sh          runtime only
#   launch/setup_env.sh test     runtime + test/conversion dependencies (torch CPU, transformers, open_clip)
# Every pinned file is installed with --no-deps: the pins are a complete, consistent closure, and this keeps
# pip from pulling CUDA torch or torchvision through open_clip's declared dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
files=(requirements/runtime.txt)
[ "$profile" = test ] && files+=(requirements/test.txt requirements/open_clip.txt)

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.installed-$profile"
digest=$(cat "${files[@]}" setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24" 2>&1 | grep -v "is ignored" || true
  for f in "${files[@]}"; do
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r "$f" 2>&1 | grep -v "is ignored" || true
  done
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import elip_jax" || { echo "installation failed: elip_jax does not import" >&2; exit 1; }
  echo "$digest" > "$stamp"
fi
