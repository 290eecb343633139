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
