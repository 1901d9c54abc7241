#!/usr/bin/env bash
# Set up clipsearch in ./.venv and run the main job end to end: index a folder, search
# it by text and by image, and tag it with a label set.
#
#   bash scripts/quickstart.sh [FOLDER]      (default FOLDER: data/samples)
#
# It uses the default CLIP model (ViT-B-32/laion2b_s34b_b79k) when its weights are cached
# or can be downloaded, and otherwise falls back to the bundled offline demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
photos="${1:-data/samples}"

if [ ! -x .venv/bin/clipsearch ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
cs=.venv/bin/clipsearch

echo "== indexing $photos with the default model (ViT-B-32/laion2b_s34b_b79k)"
export CLIPSEARCH_LIBRARY="$PWD/.quickstart/default"
labels=photos
if ! "$cs" index "$photos" --model ViT-B-32/laion2b_s34b_b79k; then
  echo "== the default model is not available offline: using the bundled demo model instead"
  export CLIPSEARCH_LIBRARY="$PWD/.quickstart/demo"
  labels=demo-colours
  "$cs" index "$photos" --model demo
fi

echo; echo '== clipsearch search "a red circle" -n 5'
"$cs" search "a red circle" -n 5
query=$(find "$photos" -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | head -n 1)
echo; echo "== clipsearch search --image $query -n 5"
"$cs" search --image "$query" -n 5
echo; echo "== clipsearch tag --labels $labels, then the most common tags"
"$cs" tag --labels "$labels"
"$cs" tags | sed -n 1,8p   # sed reads to the end: head would break the pipe
echo; echo "== clipsearch info"
"$cs" info
echo; echo "Library: $CLIPSEARCH_LIBRARY  (try: CLIPSEARCH_LIBRARY=$CLIPSEARCH_LIBRARY $cs search \"a yellow star\")"
