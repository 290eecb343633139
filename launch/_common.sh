# Shared helpers for the launch scripts (sourced, not run).
#
# Every command a script runs goes through `run`, which prints it shell-quoted
# (so it can be copied and pasted) and executes it unless --dry-run was given.

DRY_RUN=0

die() {
  echo "error: $*" >&2
  echo "run with --help for usage" >&2
  exit 2
}

# quote WORD: WORD as the shell would need it typed (single quotes when needed).
quote() {
  if [[ "$1" =~ ^[-A-Za-z0-9_./:=,@%+]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# quote_all WORDS...: the words quoted and joined by spaces (a command line).
quote_all() {
  local out="" w
  for w in "$@"; do out+="$(quote "$w") "; done
  printf '%s' "${out% }"
}

# Prints a command, one shell-quoted word at a time, prefixed with '+ '.
show() {
  local out="+" w
  for w in "$@"; do out+=" $(quote "$w")"; done
  echo "$out"
}

run() {
  show "$@"
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

# need VALUE_OF_FLAG FLAG: fails if a flag that takes a value has none.
need() {
  [[ $# -ge 2 && -n "$1" && "$1" != --* ]] || die "$2 needs a value"
}

# check_config PATH[:ARG]: the config file must exist (relative to the repo root).
check_config() {
  local file="${1%%:*}"
  [[ -n "$1" ]] || die "--config is required (e.g. --config configs/ssv2.py)"
  [[ -f "$REPO_ROOT/$file" || -f "$file" ]] || die "--config: no such file '$file'"
}

# The torch version of requirements-dev.txt: only to read a .pth ImageNet init file.
torch_version() {
  sed -n 's/^torch==//p' "$REPO_ROOT/requirements-dev.txt"
}
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCHVISION_URL=https://download.pytorch.org/models/resnet50-19c8e357.pth

# needs_init CONFIG INIT_FILE MAIN_FLAGS...: false when CONFIG trains from ImageNet
# weights (every config but those setting from_scratch = True, as configs/synthetic.py)
# and neither INIT_FILE nor an init flag nor --mode=eval/test is given.
needs_init() {
  local file="${1%%:*}" tv="$2" f
  shift 2
  [[ -n "$tv" ]] && return 0
  [[ -f "$REPO_ROOT/$file" ]] && file="$REPO_ROOT/$file"
  grep -Eq '^\s*c\.from_scratch\s*=\s*True' "$file" && return 0
  for f in "$@"; do
    case "$f" in
      --config.torchvision_init=?*|--config.init_from=?*|--config.from_scratch=True) return 0 ;;
      --mode=eval|--mode=test) return 0 ;;
    esac
  done
  return 1
}

# init_message CONFIG HOW: what to pass when needs_init fails.
init_message() {
  echo "$1 trains from ImageNet weights, as the official code: give $2," \
    "--config.init_from=DIR (an rsa_jax.convert folder), or --config.from_scratch=True" \
    "to train from random weights on purpose; a run resuming from its checkpoints ignores them"
}

# The jax version pinned in requirements.txt, so accelerator wheels match it.
jax_version() {
  sed -n 's/^jax==//p' "$REPO_ROOT/requirements.txt"
}

# Our pins (jax, numpy, flax, grain...) need Python >= 3.11; TPU VM base images ship
# 3.10.  uv installs a standalone CPython build into the user's home (no root, no
# apt repository that may lack the image's Ubuntu release) and makes the venv.
MIN_PYTHON=3.11
UV_VERSION=0.13.8

# python_ok PYTHON: true if PYTHON runs and is at least MIN_PYTHON.
python_ok() {
  "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" \
    2>/dev/null
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
