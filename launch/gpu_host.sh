#!/usr/bin/env bash
# Train on one GPU host with all its GPUs (one JAX process drives them all),
# or as one host of a hand-made multi-host run (--coordinator/--num_processes/
# --process_id, one call per host; for SLURM clusters use slurm_gpu.sbatch).
#
#   bash launch/gpu_host.sh --config configs/ssv2.py --workdir /data/runs/ssv2_r50_16f \
#     --data_dir /data/tfds -- --config.model.dtype=bfloat16
#
# The global batch (config.global_batch_size) is split over all GPUs of all
# hosts; batch norm sees the whole global batch.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: launch/gpu_host.sh --config FILE[:ARG] --workdir DIR [--data_dir DIR] [--gpus 0,1,...]
                          [--coordinator HOST:PORT --num_processes N --process_id I]
                          [--install] [--python PYTHON] [--dry-run] [-- EXTRA_MAIN_FLAGS...]
  --config        config file relative to the repo root, e.g. configs/ssv2.py:8
  --workdir       checkpoints, metrics and TensorBoard (shared storage for multi-host)
  --data_dir      TFDS data dir holding the built dataset (-> --config.data.data_dir)
  --gpus          GPUs to use (CUDA_VISIBLE_DEVICES); default: all
  --coordinator   multi-host: HOST:PORT of process 0 (same on every host)
  --num_processes multi-host: number of hosts
  --process_id    multi-host: index of this host, 0..N-1
  --install       pip install requirements.txt + jax[cuda12] of the same version first
  --python        Python interpreter (default: python3)
  --dry-run       print the commands, run nothing
  after --         flags passed to rsa_jax.main (--mode=test, --config.x=y, ...)
USAGE
}

CONFIG="" WORKDIR="" DATA_DIR="" GPUS="" COORD="" NPROC="" PID="" INSTALL=0 PY=python3 EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) need "${2-}" "$1"; CONFIG="$2"; shift 2 ;;
    --workdir) need "${2-}" "$1"; WORKDIR="$2"; shift 2 ;;
    --data_dir) need "${2-}" "$1"; DATA_DIR="$2"; shift 2 ;;
    --gpus) need "${2-}" "$1"; GPUS="$2"; shift 2 ;;
    --coordinator) need "${2-}" "$1"; COORD="$2"; shift 2 ;;
    --num_processes) need "${2-}" "$1"; NPROC="$2"; shift 2 ;;
    --process_id) need "${2-}" "$1"; PID="$2"; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --python) need "${2-}" "$1"; PY="$2"; shift 2 ;;
    --dry-run|--dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

check_config "$CONFIG"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus '$GPUS': expected e.g. 0,1,2,3"
if [[ -n "$COORD$NPROC$PID" ]]; then
  [[ -n "$COORD" && -n "$NPROC" && -n "$PID" ]] || \
    die "multi-host needs all of --coordinator, --num_processes and --process_id"
  [[ "$COORD" =~ ^[^:]+:[0-9]+$ ]] || die "--coordinator '$COORD': expected HOST:PORT"
  [[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "--num_processes '$NPROC': expected a positive integer"
  [[ "$PID" =~ ^[0-9]+$ && "$PID" -lt "$NPROC" ]] || \
    die "--process_id '$PID': expected an integer in [0, $NPROC)"
fi
if [[ "$DRY_RUN" == 0 ]]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this host"
  command -v "$PY" >/dev/null || die "--python '$PY' not found"
  python_ok "$PY" || die "--python '$PY' is older than Python $MIN_PYTHON, which our pins need: pass --python /path/to/python$MIN_PYTHON (e.g. from 'uv python install $MIN_PYTHON')"
fi

cd "$REPO_ROOT"
if [[ "$INSTALL" == 1 ]]; then
  run "$PY" -m pip install -q -r requirements.txt "jax[cuda12]==$(jax_version)"
fi
CMD=(env)
[[ -n "$GPUS" ]] && CMD+=(CUDA_VISIBLE_DEVICES="$GPUS")
CMD+=("$PY" -m rsa_jax.main --config="$CONFIG" --workdir="$WORKDIR")
[[ -n "$DATA_DIR" ]] && CMD+=(--config.data.data_dir="$DATA_DIR")
[[ -n "$COORD" ]] && CMD+=(--coordinator_address="$COORD" --num_processes="$NPROC" --process_id="$PID")
CMD+=("${EXTRA[@]}")
run "${CMD[@]}"
