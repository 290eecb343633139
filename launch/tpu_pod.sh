#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single host or pod) with gcloud.
#
#   bash launch/tpu_pod.sh --name rsa-v4-32 --zone us-central2-b --accelerator v4-32 \
#     --create --config configs/ssv2.py --workdir gs://BUCKET/rsa/ssv2_r50_16f \
#     --data_dir gs://BUCKET/tfds --torchvision_init resnet50-19c8e357.pth \
#     -- --config.model.dtype=bfloat16
#
# Steps (each printed before it runs; --dry-run prints them only):
#   1. (--create) gcloud compute tpus tpu-vm create
#   2. copy the committed code (git archive HEAD) to every worker (--worker=all), and
#      the --torchvision_init file (passed on as --config.torchvision_init)
#   3. provide Python 3.11 on every worker (the base image has 3.10, our pins need
#      >= 3.11): pip-install a pinned uv for the user, `uv python install 3.11`,
#      `uv venv` at ~/rsa_venv
#   4. install requirements.txt + jax[tpu] of the same version into that venv (and
#      CPU torch, of requirements-dev.txt's version, to read a .pth init file)
#   5. on every worker at once: RSA_DISTRIBUTED=1 ~/rsa_venv/bin/python -m rsa_jax.main ...
# A config that trains from ImageNet weights (every paper config) stops here, before
# anything is created, unless --torchvision_init, --config.torchvision_init=,
# --config.init_from= or --config.from_scratch=True is given.
# Each worker is one JAX process; jax.distributed.initialize() reads the slice
# topology from the TPU metadata, so no addresses are passed. The workdir (and
# the TFDS data_dir) must be on GCS: all hosts write one orbax checkpoint
# together and each reads its own shard of the data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: launch/tpu_pod.sh --name NAME --zone ZONE --config FILE[:ARG] --workdir gs://...
                         [--accelerator TYPE --create [--version RUNTIME] [--spot]]
                         [--project PROJECT] [--data_dir gs://...] [--skip_install]
                         [--torchvision_init FILE] [--detach] [--dry-run]
                         [-- EXTRA_MAIN_FLAGS...]
  --name         TPU VM name
  --zone         GCE zone of the TPU (e.g. us-central2-b)
  --accelerator  accelerator type, e.g. v4-32, v5p-64, v5litepod-16 (needed with --create)
  --create       create the TPU VM first
  --version      TPU VM runtime (default tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite)
  --spot         create a spot (preemptible) VM; the run resumes from the last checkpoint
  --project      GCP project (default: gcloud's configured project)
  --config       config file relative to the repo root, e.g. configs/ssv2.py:8
  --workdir      gs:// directory for checkpoints, metrics and TensorBoard
  --data_dir     gs:// TFDS data dir holding the built dataset (-> --config.data.data_dir)
  --skip_install do not provision Python 3.11 / reinstall packages (~/rsa_venv exists)
  --torchvision_init  local ImageNet ResNet-50 file (resnet50-19c8e357.pth or .npz):
                 copied to every worker and passed as --config.torchvision_init
  --detach       run under nohup (log: ~/rsa_jax/train.log on each worker) and return
  --dry-run      print the commands, run nothing
  after --        flags passed to rsa_jax.main (--mode=test, --config.x=y, ...)
USAGE
}

NAME="" ZONE="" ACCEL="" CREATE=0 VERSION="tpu-ubuntu2204-base" SPOT=0 PROJECT=""
CONFIG="" WORKDIR="" DATA_DIR="" SKIP_INSTALL=0 DETACH=0 EXTRA=() TV_INIT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need "${2-}" "$1"; NAME="$2"; shift 2 ;;
    --zone) need "${2-}" "$1"; ZONE="$2"; shift 2 ;;
    --accelerator) need "${2-}" "$1"; ACCEL="$2"; shift 2 ;;
    --create) CREATE=1; shift ;;
    --version) need "${2-}" "$1"; VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --project) need "${2-}" "$1"; PROJECT="$2"; shift 2 ;;
    --config) need "${2-}" "$1"; CONFIG="$2"; shift 2 ;;
    --workdir) need "${2-}" "$1"; WORKDIR="$2"; shift 2 ;;
    --data_dir) need "${2-}" "$1"; DATA_DIR="$2"; shift 2 ;;
    --skip_install) SKIP_INSTALL=1; shift ;;
    --torchvision_init) need "${2-}" "$1"; TV_INIT="$2"; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --dry-run|--dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || \
  die "--name '$NAME': lowercase letters, digits and '-', starting with a letter"
[[ -n "$ZONE" ]] || die "--zone is required (e.g. us-central2-b)"
check_config "$CONFIG"
[[ -n "$WORKDIR" ]] || die "--workdir is required (gs://BUCKET/PATH)"
[[ "$WORKDIR" == gs://?* ]] || \
  die "--workdir '$WORKDIR' must be a gs:// path: every TPU host writes the same checkpoint"
[[ -z "$DATA_DIR" || "$DATA_DIR" == gs://?* ]] || \
  die "--data_dir '$DATA_DIR' must be a gs:// path readable by every TPU host"
if [[ "$CREATE" == 1 ]]; then
  [[ -n "$ACCEL" ]] || die "--create needs --accelerator (e.g. v4-32)"
  [[ "$ACCEL" =~ ^v[0-9][a-z]*(litepod)?-[0-9]+$ ]] || \
    die "--accelerator '$ACCEL' is not a TPU type such as v4-32, v5p-64, v5litepod-16"
fi
if [[ -n "$TV_INIT" ]]; then
  [[ -f "$TV_INIT" ]] || die "--torchvision_init: no such file '$TV_INIT' (get it from $TORCHVISION_URL)"
fi
# The paper configs train from ImageNet weights: without them main would stop with
# FATAL only at step 5, after the VM is created and provisioned.
needs_init "$CONFIG" "$TV_INIT" "${EXTRA[@]}" || die "$(init_message "$CONFIG" \
  "--torchvision_init resnet50-19c8e357.pth (copied to every worker)")"
if [[ "$DRY_RUN" == 0 ]]; then
  command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK (or use --dry-run)"
fi

GFLAGS=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && GFLAGS+=(--project="$PROJECT")
JAX_VERSION="$(jax_version)"
REV="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
TARBALL="${TMPDIR:-/tmp}/rsa_jax-$REV.tar.gz"

VENV_PY="~/rsa_venv/bin/python"   # left unquoted in the remote commands: ~ expands there
UV="~/.local/bin/uv"
MAIN=(-m rsa_jax.main --config="$CONFIG" --workdir="$WORKDIR")
[[ -n "$DATA_DIR" ]] && MAIN+=(--config.data.data_dir="$DATA_DIR")
# Copied into the home folder, one level above the code folder main runs in.
[[ -n "$TV_INIT" ]] && MAIN+=(--config.torchvision_init="../$(basename "$TV_INIT")")
MAIN+=("${EXTRA[@]}")
TRAIN_CMD="cd ~/rsa_jax && RSA_DISTRIBUTED=1 $VENV_PY $(quote_all "${MAIN[@]}")"
if [[ "$DETACH" == 1 ]]; then
  TRAIN_CMD="cd ~/rsa_jax && nohup env RSA_DISTRIBUTED=1 $VENV_PY $(quote_all "${MAIN[@]}") > train.log 2>&1 &"
fi

if [[ "$CREATE" == 1 ]]; then
  CREATE_CMD=(gcloud compute tpus tpu-vm create "$NAME" "${GFLAGS[@]}"
              --accelerator-type="$ACCEL" --version="$VERSION")
  [[ "$SPOT" == 1 ]] && CREATE_CMD+=(--spot)
  run "${CREATE_CMD[@]}"
fi
run git -C "$REPO_ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME":rsa_jax.tar.gz "${GFLAGS[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" --worker=all \
  --command="rm -rf ~/rsa_jax && mkdir -p ~/rsa_jax && tar -xzf ~/rsa_jax.tar.gz -C ~/rsa_jax"
if [[ -n "$TV_INIT" ]]; then
  run gcloud compute tpus tpu-vm scp "$TV_INIT" "$NAME":"$(basename "$TV_INIT")" "${GFLAGS[@]}" \
    --worker=all
fi
if [[ "$SKIP_INSTALL" == 0 ]]; then
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" --worker=all \
    --command="python3 -m pip install -q --user uv==$UV_VERSION && $UV python install $MIN_PYTHON && $UV venv --allow-existing --python $MIN_PYTHON ~/rsa_venv"
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" --worker=all \
    --command="cd ~/rsa_jax && $UV pip install -q --python $VENV_PY -r requirements.txt \"jax[tpu]==$JAX_VERSION\""
  if [[ -n "$TV_INIT" && "$TV_INIT" != *.npz ]]; then   # torch reads the .pth (CPU build)
    run gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" --worker=all \
      --command="$UV pip install -q --python $VENV_PY --index-url $TORCH_CPU_INDEX torch==$(torch_version)"
  fi
fi
run gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" --worker=all --command="$TRAIN_CMD"
