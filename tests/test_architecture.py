"""The code layout holds: import directions between packages, references to repo
paths and doc anchors that exist, and the one private JAX API we use still in place.

See docs/architecture.md.  Every failure lists each offender as ``file:line``.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from unittest import mock

import jax
import pytest

from rsa_jax import parallel

REPO = Path(__file__).resolve().parents[1]

# --- Import directions -----------------------------------------------------------

# package -> (prefixes of modules it must never import, why).  Imports inside
# functions count too: a lazy import is still a dependency.
FORBIDDEN = {
    "rsa_jax.layers": (("rsa_jax.",), "layers are the method alone and import nothing of ours"),
    "rsa_jax.data": (("rsa_jax.models", "rsa_jax.layers", "rsa_jax.train", "rsa_jax.convert",
                      "flax", "optax"),
                     "data never imports model or training code (main.py/train join them)"),
    "rsa_jax.models": (("rsa_jax.data", "rsa_jax.train", "rsa_jax.convert"),
                       "models never import data, training or conversion code"),
    "rsa_jax.convert": (("rsa_jax.train", "rsa_jax.data"),
                        "the converter maps weights; it needs models, not data or training"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in `source`, relative ones resolved."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` may import a submodule: record both spellings.
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}")
                                            for a in node.names]
    return out


def _import_violations() -> list[str]:
    bad = []
    for package, (prefixes, why) in FORBIDDEN.items():
        root = REPO / package.replace(".", "/")
        own = package + "."
        for path in sorted(root.rglob("*.py")):
            found = _imports(path.read_text(encoding="utf-8"), _module_name(path),
                             path.name == "__init__.py")
            for line, mod in found:
                for p in prefixes:
                    hit = (mod + ".").startswith(p if p.endswith(".") else p + ".")
                    if hit and not (mod + ".").startswith(own):
                        bad.append(f"{path.relative_to(REPO)}:{line}: imports {mod} ({why})")
                        break
    return sorted(set(bad))


def test_import_directions():
    bad = _import_violations()
    assert not bad, "forbidden imports (docs/architecture.md):\n" + "\n".join(bad)


def test_import_check_sees_lazy_and_relative_imports():
    """The checker itself: a lazy absolute import and relative imports resolve."""
    src = ("def f():\n    from rsa_jax.models import build_model\n"
           "from . import conv_forms\nfrom ..data import pipeline\n")
    found = _imports(src, "rsa_jax.layers.probe")
    assert (2, "rsa_jax.models") in found
    assert (3, "rsa_jax.layers.conv_forms") in found
    assert (4, "rsa_jax.data.pipeline") in found
    in_init = _imports(src, "rsa_jax.layers", is_package=True)  # an __init__.py
    assert (3, "rsa_jax.layers.conv_forms") in in_init
    assert (4, "rsa_jax.data.pipeline") in in_init


# --- Paths and anchors named in the repository ------------------------------------

_TEXT_SUFFIXES = (".py", ".md", ".sh", ".sbatch")
_ROOTS = ("docs", "configs", "rsa_jax", "benchmarks", "launch", "tests")
# A repo-relative path: starts at a top-level folder, not inside a URL or another path.
_PATH_RE = re.compile(r"(?<![\w./~$-])((?:" + "|".join(_ROOTS)
                      + r")/[\w./*{},-]*[\w*}])(#[\w-]+)?")
_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")  # markdown [text](target)
_HEADING_RE = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
# Names that are missing on purpose (error-case tests).
_DELIBERATELY_MISSING = re.compile(r"nope|missing|nonexist|does_not_exist")


def _text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        names = out.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()]
    return sorted(REPO / n for n in names
                  if n.endswith(_TEXT_SUFFIXES) and (REPO / n).is_file())


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING_RE.match(line)
        if m:
            anchors.add(_slug(m.group(1)))
    return anchors


def _check_target(target: Path, anchor: str | None, shown: str) -> str | None:
    """Why ``shown`` is a broken reference, or None if it resolves."""
    if any(c in str(target) for c in "*{"):
        pattern = str(target.relative_to(REPO))
        if "{" in pattern:  # brace lists: check every alternative
            head, alts, tail = re.match(r"(.*?)\{([^}]*)\}(.*)", pattern).groups()
            if "," not in alts:  # an f-string / template field such as launch/{script}
                return None
            misses = [a for a in alts.split(",")
                      if _check_target(REPO / f"{head}{a}{tail}", None, shown)]
            return f"{shown}: no match for {misses}" if misses else None
        return None if any(REPO.glob(pattern)) else f"{shown}: nothing matches"
    if not target.exists():
        return f"{shown}: no such path"
    if anchor and target.suffix == ".md" and anchor not in _anchors(target):
        return f"{shown}: no heading with anchor #{anchor} in {target.relative_to(REPO)}"
    return None


def _reference_problems() -> list[str]:
    problems = []
    for path in _text_files():
        rel = path.relative_to(REPO)
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for no, line in enumerate(lines, 1):
            refs = [(REPO / m.group(1), (m.group(2) or "#")[1:] or None, m.group(0))
                    for m in _PATH_RE.finditer(line)]
            if path.suffix == ".md":  # relative markdown links, from the page's folder
                for m in _LINK_RE.finditer(line):
                    t = m.group(1)
                    if (re.match(r"[a-z]+:", t) or t.split("#")[0].startswith(_ROOTS)
                            or not re.search(r"[./#]", t)):
                        continue  # URLs; repo-rooted paths (above); formulas like x[i](p)
                    file, _, anchor = t.partition("#")
                    refs.append((path.parent / file if file else path, anchor or None, t))
            for target, anchor, shown in refs:
                if _DELIBERATELY_MISSING.search(shown):
                    continue
                why = _check_target(target.resolve() if ".." in str(target) else target,
                                    anchor, shown)
                if why:
                    problems.append(f"{rel}:{no}: {why}")
    return problems


def test_referenced_paths_and_anchors_exist():
    problems = _reference_problems()
    assert not problems, "references to missing paths or anchors:\n" + "\n".join(problems)


def test_no_references_outside_the_repo():
    # Spelled in pieces so that this file does not match itself.
    banned = ("rsa-method" + ".md", ".." + "/shared")
    hits = [f"{p.relative_to(REPO)}:{no}: {b}"
            for p in _text_files()
            for no, line in enumerate(p.read_text(encoding="utf-8", errors="replace")
                                      .splitlines(), 1)
            for b in banned if b in line]
    assert not hits, ("references to material outside the repo; cite docs/method.md "
                      "anchors instead:\n" + "\n".join(hits))


def test_reference_checker_catches_a_bad_anchor_and_path():
    page = REPO / "docs" / "method.md"
    assert "notation" in _anchors(page)
    assert _check_target(page, "notation", "x") is None
    assert "no heading" in _check_target(page, "no-such-heading", "x")
    assert "no such path" in _check_target(REPO / "docs" / "nothing-here.md", None, "x")
    assert _check_target(REPO / "tests" / "fixtures" / "rsa_grid_*.npz", None, "x") is None
    assert _slug("Output layout") == "output-layout"
    assert _slug("`ImageNet` init") == "imagenet-init"


# --- The private JAX API behind parallel.barrier ------------------------------------

def test_private_distributed_client_api_is_still_there():
    """parallel.barrier reaches jax._src.distributed; fail loudly if JAX moved it."""
    try:
        client = parallel.distributed_client()
        from jax._src.lib import _jax
        wait = _jax.DistributedRuntimeClient.wait_at_barrier
    except (ImportError, AttributeError) as e:
        pytest.fail(f"JAX {jax.__version__} moved the private coordination-service client "
                    f"used by rsa_jax.parallel.distributed_client / barrier: {e!r}. Find "
                    "its new home (jax._src.distributed.global_state.client) and update "
                    "distributed_client().")
    assert client is None  # one process, jax.distributed not started
    assert callable(wait)


def test_barrier_uses_the_client_with_unique_ids():
    calls = []

    class FakeClient:
        def wait_at_barrier(self, barrier_id, timeout_ms):
            calls.append((barrier_id, timeout_ms))

    with mock.patch.object(jax, "process_count", return_value=2), \
            mock.patch.object(parallel, "distributed_client", return_value=FakeClient()):
        parallel.barrier("ready", timeout_s=5)
        parallel.barrier("ready", timeout_s=5)
    assert [c[1] for c in calls] == [5000, 5000]
    assert calls[0][0] != calls[1][0] and all("ready" in c[0] for c in calls)
