"""The code layout holds: import directions between packages (a rule for each), no
import cycles, no private names used across modules, references to repo paths and doc
anchors that exist, and the one private JAX API we use still in place.

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

# Every unit of rsa_jax (a package, or a module at the top) and the units it may
# import: everything else of ours is forbidden.  Imports inside functions count too:
# a lazy import is still a dependency.  A new module or package fails
# test_every_unit_has_a_rule until it is placed here (and in docs/architecture.md).
ALLOWED = {
    "rsa_jax": ((), "the package marker holds only the version"),
    "rsa_jax.layers": ((), "layers are the method alone and import nothing of ours"),
    "rsa_jax.parallel": ((), "device layout is shared infrastructure: imports nothing of ours"),
    "rsa_jax.labels": ((), "class-name files are shared infrastructure: imports nothing of ours"),
    "rsa_jax.cli": ((), "command-line plumbing is shared infrastructure: imports nothing of ours"),
    "rsa_jax.serving": ((), "the exported-model contract imports nothing of ours"),
    "rsa_jax.chips": ((), "the accelerator table is shared infrastructure"),
    "rsa_jax.data": (("rsa_jax.cli",),
                     "data never imports model or training code (main.py/train join them)"),
    "rsa_jax.models": (("rsa_jax.layers",),
                       "models never import data, training or conversion code"),
    "rsa_jax.convert": (("rsa_jax.models", "rsa_jax.layers", "rsa_jax.labels"),
                        "the converter maps weights; it needs models, not data or training"),
    "rsa_jax.train": (("rsa_jax.data", "rsa_jax.models", "rsa_jax.layers", "rsa_jax.convert",
                       "rsa_jax.parallel", "rsa_jax.labels", "rsa_jax.validate", "rsa_jax.chips"),
                      "training joins data and models; nothing after training"),
    "rsa_jax.validate": (("rsa_jax.cli", "rsa_jax.data", "rsa_jax.models", "rsa_jax.layers"),
                         "run checks read configs and build models, never training code"),
    "rsa_jax.inference": (("rsa_jax.data", "rsa_jax.models", "rsa_jax.train",
                           "rsa_jax.labels"),
                          "inference loads what training wrote"),
    "rsa_jax.explain": (("rsa_jax.inference", "rsa_jax.data", "rsa_jax.layers"),
                        "after training: builds on inference"),
    "rsa_jax.predict": (("rsa_jax.inference", "rsa_jax.explain", "rsa_jax.data"),
                        "after training: builds on inference"),
    "rsa_jax.export": (("rsa_jax.inference", "rsa_jax.serving", "rsa_jax.train"),
                       "after training: builds on inference"),
    "rsa_jax.analyze": (("rsa_jax.inference", "rsa_jax.train", "rsa_jax.labels"),
                        "after training: builds on inference"),
    "rsa_jax.ensemble": (("rsa_jax.train",), "after training: combines score files"),
    "rsa_jax.main": (("rsa_jax.train", "rsa_jax.data", "rsa_jax.parallel",
                      "rsa_jax.validate", "rsa_jax.cli"),
                     "the entry point joins everything below it"),
    "rsa_jax.aot": (("rsa_jax.train", "rsa_jax.models", "rsa_jax.layers", "rsa_jax.data",
                     "rsa_jax.parallel", "rsa_jax.validate", "rsa_jax.cli", "rsa_jax.chips"),
                    "the compile-ahead command sits beside main, above training"),
}
# Third-party imports that a unit must not make.
FORBIDDEN_LIBRARIES = {
    "rsa_jax.data": (("flax", "optax"), "data needs no model-building libraries"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    """The package or top-level module that ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


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


def _our_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / "rsa_jax").rglob("*.py"))}


def _edges(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line}, over our modules only.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
    ``pkg`` (its ``__init__``); a module's own parent packages, which Python runs
    first, are not edges (every ``__init__`` that re-exports would be a cycle).
    """
    graph = {}
    for name, path in modules.items():
        targets: dict[str, int] = {}
        spellings = _imports(path.read_text(encoding="utf-8"), name,
                             path.name == "__init__.py")
        by_line: dict[int, list[str]] = {}
        for line, mod in spellings:
            by_line.setdefault(line, []).append(mod)
        for line, mods in by_line.items():
            found = {m for m in mods if m in modules}
            # `from pkg import mod`: the submodule, not pkg (recorded as both).
            found -= {m for m in found if any(o.startswith(m + ".") for o in found)}
            for mod in mods:  # `import rsa_jax.x.y.Name`-like spellings: nearest module
                while mod and mod not in modules and mod.startswith("rsa_jax"):
                    mod = mod.rpartition(".")[0]
                if mod in modules and not any(f.startswith(mod + ".") for f in found):
                    found.add(mod)
            for mod in found:
                if mod != name and not name.startswith(mod + "."):
                    targets.setdefault(mod, line)
        graph[name] = targets
    return graph


def _import_violations() -> list[str]:
    modules = _our_modules()
    bad = []
    for name, targets in _edges(modules).items():
        unit = _unit(name)
        allowed, why = ALLOWED.get(unit, ((), "no rule"))
        for target, line in targets.items():
            if _unit(target) not in (unit, *allowed):
                bad.append(f"{modules[name].relative_to(REPO)}:{line}: imports {target} "
                           f"({unit}: {why})")
    for unit, (libraries, why) in FORBIDDEN_LIBRARIES.items():
        for name, path in modules.items():
            if _unit(name) != unit:
                continue
            for line, mod in _imports(path.read_text(encoding="utf-8"), name,
                                      path.name == "__init__.py"):
                if mod.split(".")[0] in libraries:
                    bad.append(f"{path.relative_to(REPO)}:{line}: imports {mod} ({why})")
    return sorted(set(bad))


def test_import_directions():
    bad = _import_violations()
    assert not bad, "forbidden imports (docs/architecture.md):\n" + "\n".join(bad)


def test_every_unit_has_a_rule():
    units = {_unit(m) for m in _our_modules()}
    missing = sorted(units - set(ALLOWED))
    assert not missing, (f"no import rule for {missing}: add each to ALLOWED in "
                         "tests/test_architecture.py and draw it in docs/architecture.md")


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _unit_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, tuple[str, int]]]:
    """unit -> {unit it imports: (first importing module, line)}."""
    units: dict[str, dict[str, tuple[str, int]]] = {}
    for name, targets in sorted(graph.items()):
        here = units.setdefault(_unit(name), {})
        for target, line in sorted(targets.items()):
            if _unit(target) != _unit(name):
                here.setdefault(_unit(target), (name, line))
    return units


def _cycle_report() -> list[str]:
    modules = _our_modules()
    graph = _edges(modules)
    where = {m: str(p.relative_to(REPO)) for m, p in modules.items()}
    out = []
    for cycle in _cycles(graph):
        edges = [f"{where[a]}:{graph[a][b]} -> {b}" for a in cycle for b in graph[a]
                 if b in cycle]
        out.append("modules " + " <-> ".join(cycle) + ":\n    " + "\n    ".join(edges))
    units = _unit_graph(graph)
    for cycle in _cycles(units):
        edges = [f"{where[m]}:{line} -> {b}" for a in cycle for b, (m, line) in units[a].items()
                 if b in cycle]
        out.append("packages " + " <-> ".join(cycle) + ":\n    " + "\n    ".join(edges))
    return out


def test_no_import_cycles():
    """Between modules, and between units (packages and top-level modules)."""
    cycles = _cycle_report()
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(cycles)


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []
    modules = {"rsa_jax.train.train": 0, "rsa_jax.train.step": 0, "rsa_jax.inference": 0}
    graph = {"rsa_jax.train.train": {"rsa_jax.inference": 9},
             "rsa_jax.inference": {"rsa_jax.train.step": 3}, "rsa_jax.train.step": {}}
    assert _cycles(graph) == []  # no module cycle, but the packages form one:
    assert _cycles(_unit_graph(graph)) == [["rsa_jax.inference", "rsa_jax.train"]]
    assert len(modules) == 3


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


# --- Public names across modules ---------------------------------------------------

_PRIVATE_ROOTS = ("rsa_jax", "benchmarks", "tests", "configs")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_ours(dotted: str, importer: Path) -> Path | None:
    """The file of our module ``dotted`` (a package's ``__init__.py``), or None.

    Tests and benchmarks also import their neighbours by bare name (``data_helpers``)."""
    parts = dotted.split(".")
    for base in ((REPO,) if parts[0] in _PRIVATE_ROOTS else ()) + (importer.parent,):
        stem = base.joinpath(*parts)
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _private_uses(path: Path, source: str) -> list[tuple[int, str]]:
    """(line, what) for each private name of another of our modules that `source` uses:
    ``from ours import _name`` and ``ours._name`` (module bound by an import)."""
    tree = ast.parse(source)
    module = _module_name(path) if path.is_relative_to(REPO) else path.stem
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bound: dict[str, str] = {}   # local name -> our module's dotted name
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _resolve_ours(a.name, path):
                    bound[a.asname or a.name.split(".")[0]] = a.asname and a.name or \
                        a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            target = _resolve_ours(base, path) if base else None
            if target is None:
                continue
            for a in node.names:
                if _resolve_ours(f"{base}.{a.name}", path):
                    bound[a.asname or a.name] = f"{base}.{a.name}"
                elif _private(a.name) and target.resolve() != path.resolve():
                    out.append((node.lineno, f"from {base} import {a.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id not in bound:
                continue
            dotted = ".".join([bound[value.id], *chain])
            target = _resolve_ours(dotted, path)
            if target is not None and target.resolve() != path.resolve():
                out.append((node.lineno, f"{dotted}.{node.attr}"))
    return sorted(set(out))


def test_no_private_names_across_modules():
    """A module's ``_name`` is its own: others use its public API (docs/architecture.md).

    Library code, configs and benchmark scripts may neither import nor reach into
    another module's private names; tests may not import them (a test may still
    call ``module._helper`` of the module it tests), nor import from another test
    module: shared test code lives in helper modules (tests/*_helpers.py)."""
    hits = []
    for root in ("rsa_jax", "benchmarks", "configs", "tests"):
        for p in sorted((REPO / root).rglob("*.py")):
            source = p.read_text(encoding="utf-8")
            uses = _private_uses(p, source)
            if root == "tests":
                uses = [(line, what) for line, what in uses if what.startswith("from ")]
                uses += _test_module_imports(p, source)
            hits += [f"{p.relative_to(REPO)}:{line}: {what}" for line, what in uses]
    assert not hits, "private names used across modules:\n" + "\n".join(hits)


def _test_module_imports(path: Path, source: str) -> list[tuple[int, str]]:
    """(line, what) for each import of another test module (tests/test_*.py)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            target = _resolve_ours(name, path)
            if (target is not None and target.name.startswith("test_")
                    and target.resolve() != path.resolve()):
                out.append((node.lineno, f"imports the test module {name}"))
    return out


def test_private_name_check_sees_imports_and_attributes():
    here = REPO / "tests" / "probe.py"
    src = ("from rsa_jax.data.pipeline import _builder, class_names\n"
           "from rsa_jax.data import pipeline as p\n"
           "import rsa_jax.data.pipeline\n"
           "import data_helpers\n"
           "def f(x):\n"
           "    return p._builder(x), rsa_jax.data.pipeline._builder(x), x._private,"
           " data_helpers._x, p.__name__\n")
    found = _private_uses(here, src)
    assert found == [(1, "from rsa_jax.data.pipeline import _builder"),
                     (6, "data_helpers._x"), (6, "rsa_jax.data.pipeline._builder")]
    assert _test_module_imports(here, "from test_train_loop import tiny\nimport tests.test_model\n"
                                "from tests import train_helpers\n") == [
        (1, "imports the test module test_train_loop"),
        (2, "imports the test module tests.test_model")]
