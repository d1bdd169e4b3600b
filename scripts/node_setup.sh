#!/usr/bin/env bash
# Installs this repository on a cluster node (cluster.yaml's setup_commands, inside the container).
#
# An image built from ./Dockerfile already holds the dependencies and, in ~/.finetune-search-deps,
# the fingerprint of the list it was built from: when the mounted checkout's pyproject.toml asks
# for the same list, only the code is installed (seconds). Otherwise (the stock Ray image, or a
# pyproject.toml changed since the image was built) everything is installed (~3 GB of TensorFlow
# and CUDA, 10-20 minutes), keeping the image's Ray.
set -euo pipefail

repo="${1:-$HOME/finetune-search}"
marker="$HOME/.finetune-search-deps"
wanted=$(python "$repo/scripts/image_requirements.py" "$repo/pyproject.toml" --extra gpu \
  --fingerprint)

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ]; then
  echo "finetune-search: the image holds this project's dependencies; installing the code only"
  pip install --no-deps -e "$repo"
else
  if [ -f "$marker" ]; then
    echo "finetune-search: pyproject.toml changed since the image was built; installing the" \
      "dependencies (rebuild the image to skip this)"
  else
    echo "finetune-search: the image has no baked dependencies; installing them (10-20 minutes;" \
      "an image built from ./Dockerfile skips this)"
  fi
  ray_version=$(python -c 'import ray; print(ray.__version__)')
  pip install -e "$repo[gpu]" "ray[tune,default]==$ray_version"
fi
