#!/usr/bin/env bash
# Set up clipsearch in ./.venv and run the main job end to end: index a folder, search
# it by text and by image, and tag it with a label set.
#
#   bash scripts/quickstart.sh [FOLDER]      (default FOLDER: data/samples)
#
# It uses the default CLIP model (ViT-B-32/laion2b_s34b_b79k) when its weights are cached
# or can be downloaded, and otherwise says so and uses the bundled offline demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
photos="${1:-data/samples}"

if [ ! -x .venv/bin/clipsearch ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
cs=.venv/bin/clipsearch

default=ViT-B-32/laion2b_s34b_b79k
# Load the default model once (downloading its weights if they are not cached) before
# indexing with it; where that cannot be done, say so and use the bundled demo model.
set +e
.venv/bin/python - "$default" <<'EOF'
import logging
import sys

from clipsearch.encoder import Encoder
from clipsearch.errors import WeightsUnavailableError

logging.basicConfig(level=logging.CRITICAL)  # as the CLI does: open_clip logs each failed download
try:
    Encoder(sys.argv[1], "cpu", precision="fp32").load()
except WeightsUnavailableError:
    sys.exit(3)
EOF
found=$?
set -e
if [ "$found" -eq 0 ]; then
  model=$default labels=photos
  export CLIPSEARCH_LIBRARY="$PWD/.quickstart/default"
elif [ "$found" -eq 3 ]; then
  echo "== the default model ($default) can't be downloaded here; using the bundled demo model"
  model=demo labels=demo-colours
  export CLIPSEARCH_LIBRARY="$PWD/.quickstart/demo"
else
  exit "$found"
fi

echo "== clipsearch index $photos --model $model"
"$cs" index "$photos" --model "$model"

echo; echo '== clipsearch search "a red circle" -n 5'
"$cs" search "a red circle" -n 5
query=$(find "$photos" -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | head -n 1)
echo; echo "== clipsearch search --image $query -n 5"
"$cs" search --image "$query" -n 5
echo; echo "== clipsearch tag --labels $labels (the most common tags)"
"$cs" tag --labels "$labels" | sed -n 1,8p   # sed reads to the end: head would break the pipe
echo; echo "== clipsearch info"
"$cs" info
echo; echo "Library: $CLIPSEARCH_LIBRARY  (try: CLIPSEARCH_LIBRARY=$CLIPSEARCH_LIBRARY $cs search \"a yellow star\")"
