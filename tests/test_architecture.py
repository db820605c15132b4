"""The house rules of docs/ARCHITECTURE.md, checked by reading the source with ``ast``.

Every ``import`` / ``from ... import`` statement counts, at module level or inside a function
(a lazy import is still an edge of the module graph).  ``from package import name`` is an edge to
``package.name`` when that is a module of the tree, else to ``package``.  Importing
``a.b.c`` is an edge to ``a.b.c`` only: the parent packages' ``__init__`` files run first, but
they are not counted (every module would otherwise reach ``rlkit/__init__.py``).  Names a
registry imports by path at run time (``"rlkit.rollout.vllm:build"``) are data, not edges.

Rules:
1. no import circles among the modules of ``rlkit/`` and ``rewards/``;
2. the leaf rewards (``LEAF_REWARDS``) import neither ``rlkit`` nor ``torch``, and from
   ``rewards`` only other leaves;
3. every other (model-backed) reward module imports from ``rlkit`` only ``rlkit.reward_api``;
4. no ``rlkit`` module imports a model-backed reward: only the reward contract and the leaves;
5. no source file over ``MAX_LINES`` lines;
6. ``train()`` in rlkit/trainer.py is at most ``MAX_TRAIN_LINES`` lines with no nested
   function or class.

Each checker is a plain function over a root folder, so the ``*_catches_*`` tests below run it
on a small made-up tree that breaks its rule and assert that it reports the break.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlkit", "rewards")
SOURCE_FOLDERS = ("rlkit", "rewards", "scripts", "examples", "tests")
MAX_LINES = 500
MAX_TRAIN_LINES = 80
# Rewards that need no model: the reward contract (``rewards``, core, pool) and the task rewards.
LEAF_REWARDS = frozenset({"rewards", "rewards.core", "rewards.pool", "rewards.math", "rewards.sql",
                          "rewards.sql_exec", "rewards.sql_sandbox", "rewards.toolrl", "rewards.shaping"})
REWARD_API = "rlkit.reward_api"
# Command modules outside rlkit's core that build reward models: ``rlkit train-prm`` trains the
# token-classification PRM that rewards.prm scores with, so it uses that model's layout.
REWARD_MODEL_COMMANDS = frozenset({"rlkit.prm_training"})


@dataclass(frozen=True)
class Import:
    importer: str   # module doing the import
    target: str     # module imported (a module of the tree where it names one)
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file under the packages."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import statement of one module, module level and function level alike."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                parent = package[:len(package) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(Import(name, sub if sub in known else base, node.lineno))
    return out


def all_imports(root: Path, packages=PACKAGES) -> list[Import]:
    known = modules(root, packages)
    found = [imp for name, path in known.items() for imp in imports_of(name, path, known)]
    return list(dict.fromkeys(found))  # `from m import a, b` once


def owning_module(target: str, known) -> str | None:
    """The module of the tree that ``target`` names (``a.b.attr`` -> ``a.b``), or None."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph(root: Path, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """Module -> {imported module of the tree: first line importing it}."""
    known = modules(root, packages)
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    for imp in all_imports(root, packages):
        target = owning_module(imp.target, known)
        if target and target != imp.importer:
            edges = graph[imp.importer]
            edges[target] = min(edges.get(target, imp.line), imp.line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def all_cycles(graph: dict[str, dict[str, int]], limit: int = 20) -> list[list[str]]:
    """Circles found one after another, each time without the edge that closed the last one
    (so every circle is reported once, though not every path through a tangle)."""
    graph = {k: dict(v) for k, v in graph.items()}
    found = []
    while len(found) < limit and (cycle := find_cycle(graph)):
        found.append(cycle)
        del graph[cycle[-2]][cycle[-1]]
    return found


def describe_cycle(cycle: list[str], graph, known) -> str:
    steps = [f"{a} -> {b} ({known[a].relative_to(ROOT) if known[a].is_relative_to(ROOT) else known[a]}:"
             f"{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "import circle: " + " ".join(cycle) + "\n  " + "\n  ".join(steps)


def top(target: str) -> str:
    return target.partition(".")[0]


def leaf_violations(root: Path) -> list[str]:
    """Rule 2: a leaf reward importing rlkit, torch or a reward that is not a leaf."""
    known = modules(root)
    bad = []
    for imp in all_imports(root):
        if imp.importer not in LEAF_REWARDS:
            continue
        target = owning_module(imp.target, known) or imp.target
        if top(target) in ("rlkit", "torch") or (top(target) == "rewards" and target not in LEAF_REWARDS):
            bad.append(f"{imp.importer} imports {imp.target} (line {imp.line})")
    return bad


def model_reward_violations(root: Path) -> list[str]:
    """Rule 3: a model-backed reward (any reward module not a leaf) importing rlkit other than
    through ``rlkit.reward_api``."""
    bad = []
    for imp in all_imports(root):
        if (top(imp.importer) == "rewards" and imp.importer not in LEAF_REWARDS and top(imp.target) == "rlkit"
                and imp.target != REWARD_API and not imp.target.startswith(REWARD_API + ".")):
            bad.append(f"{imp.importer} imports {imp.target} (line {imp.line}); use {REWARD_API}")
    return bad


def core_violations(root: Path) -> list[str]:
    """Rule 4: an rlkit module importing a reward module other than the contract and the leaves."""
    known = modules(root)
    bad = []
    for imp in all_imports(root):
        target = owning_module(imp.target, known) or imp.target
        if (top(imp.importer) == "rlkit" and imp.importer not in REWARD_MODEL_COMMANDS
                and top(target) == "rewards" and target not in LEAF_REWARDS):
            bad.append(f"{imp.importer} imports {imp.target} (line {imp.line}), a model-backed reward")
    return bad


def long_files(root: Path, folders=SOURCE_FOLDERS, limit: int = MAX_LINES) -> list[str]:
    """Rule 5: ``.py`` files over ``limit`` lines."""
    out = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                out.append(f"{path.relative_to(root)}: {n} lines")
    return out


def train_problems(path: Path, limit: int = MAX_TRAIN_LINES) -> list[str]:
    """Rule 6: ``train()`` too long, or holding nested functions / classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    if not found:
        return [f"{path}: no module-level train()"]
    fn = found[0]
    out = []
    length = fn.end_lineno - fn.lineno + 1
    if length > limit:
        out.append(f"train() is {length} lines (lines {fn.lineno}-{fn.end_lineno}), over {limit}")
    for node in ast.walk(fn):
        if node is not fn and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(f"train() holds a nested {type(node).__name__} {node.name!r} (line {node.lineno})")
    return out


# ---- the rules on this tree ---------------------------------------------------------------------

def test_no_import_circles():
    graph = import_graph(ROOT)
    cycles = all_cycles(graph)
    assert not cycles, "\n".join(describe_cycle(c, graph, modules(ROOT)) for c in cycles)


def test_leaf_rewards_import_neither_rlkit_nor_torch():
    assert LEAF_REWARDS <= set(modules(ROOT)), "a leaf reward listed here is missing"
    bad = leaf_violations(ROOT)
    assert not bad, "\n".join(bad)


def test_model_backed_rewards_reach_rlkit_only_through_reward_api():
    bad = model_reward_violations(ROOT)
    assert not bad, "\n".join(bad)


def test_rlkit_imports_only_the_reward_contract_and_leaf_rewards():
    bad = core_violations(ROOT)
    assert not bad, "\n".join(bad)


def test_no_source_file_over_500_lines():
    bad = long_files(ROOT)
    assert not bad, "\n".join(bad)


def test_train_is_short_and_flat():
    bad = train_problems(ROOT / "rlkit" / "trainer.py")
    assert not bad, "\n".join(bad)


# ---- each checker reports a break ---------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"rlkit/__init__.py": "", "rewards/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_cycle_check_catches_a_lazy_circle_through_a_package(tmp_path):
    root = _tree(tmp_path, {
        "rlkit/a.py": "import os\nfrom rlkit.pkg import helper\n",
        "rlkit/pkg/__init__.py": "def helper():\n    from . import b\n",
        "rlkit/pkg/b.py": "def f():\n    from rlkit import a\n",
        "rlkit/c.py": "from rlkit.a import x\n",
    })
    graph = import_graph(root)
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"rlkit.a", "rlkit.pkg", "rlkit.pkg.b"}
    assert "rlkit.pkg -> rlkit.pkg.b" in describe_cycle(cycle, graph, modules(root))
    (root / "rlkit/pkg/b.py").write_text("import rlkit.c\n")  # b -> c -> a -> pkg -> b
    assert set(find_cycle(import_graph(root))) == {"rlkit.a", "rlkit.pkg", "rlkit.pkg.b", "rlkit.c"}
    (root / "rlkit/c.py").write_text("from rlkit.a import x\nimport rlkit.pkg.b\n")  # and c <-> b
    assert [set(c) for c in all_cycles(import_graph(root))] == [{"rlkit.a", "rlkit.pkg", "rlkit.pkg.b", "rlkit.c"},
                                                                 {"rlkit.c", "rlkit.pkg.b"}]
    (root / "rlkit/pkg/b.py").write_text("HOOK = 'rlkit.a:x'  # a registry path is no import\n")
    assert find_cycle(import_graph(root)) is None


def test_leaf_check_catches_rlkit_torch_and_model_rewards(tmp_path):
    root = _tree(tmp_path, {
        "rewards/core.py": "def f():\n    import torch.nn\n",
        "rewards/math.py": "from rlkit.batch import RolloutBatch\n",
        "rewards/shaping.py": "from . import prime\n",
        "rewards/pool.py": "from rewards import core\nimport json\n",
        "rewards/prime.py": "",
        "rlkit/batch.py": "",
    })
    assert leaf_violations(root) == ["rewards.core imports torch.nn (line 2)",
                                     "rewards.math imports rlkit.batch (line 1)",
                                     "rewards.shaping imports rewards.prime (line 1)"]


def test_model_reward_check_allows_only_the_reward_api(tmp_path):
    root = _tree(tmp_path, {
        "rewards/judge_client.py": "from rlkit.reward_api import RewardContext\nfrom rlkit import reward_api\n",
        "rewards/prime.py": "def f():\n    from rlkit.backends import make_backend\n",
        "rewards/core.py": "",
        "rlkit/reward_api.py": "",
    })
    assert model_reward_violations(root) == ["rewards.prime imports rlkit.backends (line 2); use rlkit.reward_api"]


def test_core_check_catches_rlkit_importing_a_model_backed_reward(tmp_path):
    root = _tree(tmp_path, {
        "rlkit/scoring.py": "from rewards import combine\nfrom rewards.shaping import length_penalty\n",
        "rlkit/trainer.py": "def f():\n    from rewards import judge\n",
        "rewards/judge.py": "",
        "rewards/shaping.py": "",
    })
    assert core_violations(root) == ["rlkit.trainer imports rewards.judge (line 2), a model-backed reward"]


def test_size_check_catches_a_long_file(tmp_path):
    root = _tree(tmp_path, {"tests/test_x.py": "x = 1\n" * (MAX_LINES + 1), "rlkit/ok.py": "x = 1\n" * MAX_LINES})
    assert long_files(root) == [f"tests/test_x.py: {MAX_LINES + 1} lines"]


def test_train_check_catches_length_and_nesting(tmp_path):
    path = tmp_path / "trainer.py"
    path.write_text("def train(cfg):\n    key = lambda r: r\n    return key(cfg)\n")
    assert train_problems(path) == []
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_TRAIN_LINES))
    path.write_text(f"def train(cfg):\n{body}    def log(step):\n        return x0\n    return log\n")
    problems = train_problems(path)
    assert problems[0] == f"train() is {MAX_TRAIN_LINES + 4} lines (lines 1-{MAX_TRAIN_LINES + 4}), over 80"
    assert problems[1] == f"train() holds a nested FunctionDef 'log' (line {MAX_TRAIN_LINES + 2})"


@pytest.mark.parametrize("rel", ["rlkit/records.py", "rlkit/eval/specs.py"])
def test_modules_that_break_old_circles_import_no_rlkit_module_beyond_their_role(rel):
    """records.py (read by data.py and the task loaders) imports no rlkit module; specs.py
    (read by config.py) imports only the benchmark table, never the runner, checkpoint or config."""
    known = modules(ROOT)
    name = module_name(ROOT / rel, ROOT)
    targets = {owning_module(i.target, known) for i in imports_of(name, ROOT / rel, known)} - {None}
    assert targets <= {"rlkit.eval.benchmarks"}, targets
