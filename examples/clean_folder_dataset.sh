#!/usr/bin/env bash
# The paper's whole loop on an identity-folder dataset (<faces>/<identity>/<image>):
# train a K=3 sub-center model on the noisy set, score every image, drop non-dominant sub-centers and
# images over 75°, export the clean core as insightface RecordIO, and retrain on it with K=1.
#
# Usage: examples/clean_folder_dataset.sh FACES_DIR WORK_DIR [train options, e.g. --backbone r50 --epochs 20]
# Set FACECLEANER to run another launcher, e.g. FACECLEANER="python -m facecleaner".
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 FACES_DIR WORK_DIR [train options...]" >&2
    exit 2
fi
faces=$1
work=$2
shift 2
read -r -a fc <<< "${FACECLEANER:-facecleaner}"

"${fc[@]}" train "$faces" --out "$work/run" "$@"
"${fc[@]}" score "$work/run" "$faces" --out "$work/scores.parquet"
"${fc[@]}" prune "$work/scores.parquet" --angle 75 --out "$work/clean.parquet" --min-images 3
"${fc[@]}" export "$work/clean.parquet" --format rec --out "$work/clean_rec"
"${fc[@]}" train "$work/clean_rec" --out "$work/retrained" --subcenters 1 "$@"
echo "clean manifest: $work/clean.parquet; retrained K=1 model: $work/retrained/model.pt"
