#!/usr/bin/env bash
# Regenerates the pictures of docs/using.md from the synthetic demo's workdir:
#   docs/img/rsa_kernels.png       kernels of the last RSA layer on a fresh clip
#   docs/img/class_evidence.png    per-frame class evidence on that clip
#   docs/img/confusion_matrix.png  confusion matrix of the validation split
# and checks predict on 64 fresh clips (>= 90 % top-1, right class names).
#
#   bash docs/make_figures.sh /tmp/rsa_synth
#
# The workdir comes from
#   python -m rsa_jax.main --config configs/synthetic.py --workdir /tmp/rsa_synth
set -euo pipefail
WORKDIR=${1:?usage: docs/make_figures.sh WORKDIR}
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
mkdir -p docs/img

# Fresh clips (never in the dataset): accuracy and class names; keeps the clips.
python tests/predict_fresh_clips.py --workdir "$WORKDIR" --generate 64 --out "$TMP/clips"

# Kernel and evidence pictures of clip 0 ('Moving something from left to right').
# layer1_1 (12x12 grid at 48² input, both of its 2 heads) shows a 7x7 window inside the
# frame; the default, the last RSA layer, runs on a 2x2 grid where most of the window
# is zero padding.
python -m rsa_jax.predict --checkpoint "$WORKDIR" --explain "$TMP/explain" --explain_layer layer1_1 \
  "$TMP/clips/fresh_0000"
cp "$TMP"/explain/fresh_0000_kernels_*.png docs/img/rsa_kernels.png
cp "$TMP/explain/fresh_0000_evidence.png" docs/img/class_evidence.png

# Confusion matrix of the validation scores (evaluated again if training did not write them).
SCORES="$WORKDIR/eval/validation_scores.npz"
[ -f "$SCORES" ] || python -m rsa_jax.main --config configs/synthetic.py --workdir "$WORKDIR" --mode eval
python -m rsa_jax.analyze "$SCORES" --out "$TMP/analysis"
cp "$TMP/analysis/confusion_matrix.png" docs/img/confusion_matrix.png
echo "figures in docs/img; scratch files in $TMP"
