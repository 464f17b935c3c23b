"""The package's shape: no import circles (so every module imports alone), low modules never
import high ones, and each kind of thing is listed in one registry."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "src" / "kdstyles"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules a file imports, at module level or inside functions (TYPE_CHECKING
    blocks included: they are arrows for a reader too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in modules:
                c = c.rpartition(".")[0]
            if c and c != name and not name.startswith(c + "."):  # a package's own __init__ is not an arrow
                found.add(c)
    return found


@pytest.fixture(scope="module")
def graph():
    files = [p for p in ROOT.rglob("*.py") if p.name != "__main__.py"]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_no_import_circles(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


# The layers, lowest first, by folder: a module imports from its own layer or those below it, never from one
# above (the same rule as the import floors, readable from the folder names).
LAYERS = (("kdstyles.errors", "kdstyles.common"),  # what every layer uses
          ("kdstyles.store",),  # files and formats
          ("kdstyles.styles", "kdstyles.models", "kdstyles.tasks"),  # the method's parts
          ("kdstyles.data",),
          ("kdstyles.config", "kdstyles.plugins"),
          ("kdstyles.engine",),  # the training core: cohort, trainer, scoring
          ("kdstyles.report",),
          ("kdstyles.workflows", "kdstyles.deploy", "kdstyles.api"),
          ("kdstyles.cli", "kdstyles"))
ROOT_MODULES = 8  # at most: the front doors (api, cli, config, plugins), errors, __init__, __main__


def layer_of(module: str) -> int:
    found = [(len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
             if module == prefix or module.startswith(prefix + ".")]
    assert found, f"{module} is in no layer: add its folder to LAYERS"
    return max(found)[1]


def test_every_import_runs_down_the_layers(graph):
    upward = [f"{m} -> {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
              if layer_of(t) > layer_of(m)]
    assert not upward, f"imports that run up the layers: {', '.join(upward)}"


def test_the_package_root_holds_only_its_front_doors():
    found = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(found) <= ROOT_MODULES, f"{len(found)} modules at the package root ({', '.join(found)}); put each " \
        "in the folder of its layer (common, store, engine, workflows, deploy, ...)"


def test_one_registry_per_kind_of_thing():
    from kdstyles.store.runfolder import ResultRow
    from kdstyles import KDError, load_config
    from kdstyles.config import SELECTION_METRICS
    from kdstyles.data.sources import SOURCES
    from kdstyles.common.metrics import METRICS
    from kdstyles.styles.routing import PRESETS, RoutingConfig
    from kdstyles.styles import KNOWLEDGE, STYLES
    from kdstyles.tasks import TASKS

    for key, registry in (("task", TASKS), ("data.source", SOURCES)):  # names checked against the registry
        with pytest.raises(KDError) as err:
            load_config(None, [f"{key}=nothing-registered"])
        assert f"allowed: {', '.join(registry)} (got" in str(err.value)
    assert set(RoutingConfig.model_fields["preset"].annotation.__args__[0].__args__) == set(PRESETS)
    assert set(SELECTION_METRICS) - {"auto"} == {m for m, spec in METRICS.items() if spec.selectable}
    assert [f for f in ResultRow.columns() if f in METRICS] == list(METRICS)
    assert all(style.consumes in KNOWLEDGE for style in STYLES.values())
    for task in TASKS.values():
        assert task.selection in METRICS and METRICS[task.selection].task == task.name
        assert set(task.sources) <= set(SOURCES)


# The files of run and comparison folders, named by their keepers only (kdstyles.store.runfolder).
KEPT_FILES = {"config.yaml", "run.json", "metrics.csv", "times.csv", "eval.json", "outputs.npz", "checkpoints",
              "last.pt", "splits.csv", "data_report.json", "tensorboard", "overlays", "export", "comparison.json",
              "results.csv", "compression.json", "report.html", "jobs.json", "jobs", "study.db", "study.journal",
              "tune.json", "workers", "probe.json"}


def _named_files(path: Path) -> list[tuple[int, str]]:
    """Where ``path`` joins a kept file's name onto a path (``folder / "run.json"``, ``Path("eval.json")``),
    or spells a ``best-<network>.pt`` name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        joined = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            joined = [node.right]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "Path", "joinpath", "with_name"):
            joined = node.args
        found += [(n.lineno, n.value) for n in joined
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in KEPT_FILES]
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("best-"):
            found.append((node.lineno, "best-..."))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("best-") \
                and node.value.endswith(".pt"):
            found.append((node.lineno, node.value))
    return found


def test_only_the_keepers_name_run_and_comparison_files():
    keeper = ROOT / "store" / "runfolder.py"
    # the keeper itself names them (outputs.npz within a choice of two names)
    assert {name for _, name in _named_files(keeper)} | {"outputs.npz"} >= KEPT_FILES | {"best-..."}
    for path in sorted(ROOT.rglob("*.py")):
        if path != keeper:
            named = _named_files(path)
            assert not named, f"{path.relative_to(ROOT)}:{named[0][0]} names '{named[0][1]}'; ask RunFolder or " \
                              "ComparisonFolder for it"


def test_only_the_dims_module_tells_images_from_volumes():
    """2D against 3D is decided in kdstyles.common.dims (words, sample shapes, layouts, memory formats,
    axes, map layers and resampling, input files); what exists for one kind only is looked up by the
    number of dimensions (``task.synthetic[n]``, ``n in arch.spatial_dims``). Nothing else asks
    ``.volumes`` or branches on a shape's length, but the config's sections and the lines marked
    ``# validation``, which refuse a kind of data where it cannot be read."""
    import re

    pattern = re.compile(r"\bdims\s*[!=]=\s*[23]\b|channels_last_3d|\"NCDHW\"|\.volumes\b(?!\.py|`)"
                         r"|\bndim\s*[!=]=\s*[45]\b|len\([\w.]*shape\)\s*[!=]=\s*[45]\b")
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).as_posix() in ("common/dims.py", "config/sections.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0] if "# validation" not in line else ""
            assert not pattern.search(code.replace(":mod:`kdstyles.data.volumes`", "")), \
                f"{path.relative_to(ROOT)}:{n} decides 2D against 3D itself: {line.strip()}; ask kdstyles.common.dims"


def test_no_task_named_outside_tasks():
    """What differs between tasks is asked of the task (``TASKS[name]``), never decided by its name
    elsewhere; the metric registry declares which task each metric belongs to."""
    from kdstyles.tasks import TASKS

    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tasks" or rel.name == "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in TASKS:
                pytest.fail(f"{rel}:{node.lineno} names task '{node.value}'; ask the Task (kdstyles.tasks)")


# where a label array's shape is validated, not used to choose what to do: the checks the kinds
# call, and the MedMNIST reader, which refuses a file whose layout is not the task's kind
SHAPE_VALIDATORS = {"data/checks.py", "data/sources/medmnist.py"}


def test_label_kinds_are_asked_not_tested():
    """A task names the kind of its labels; only kdstyles.data.labels reads the name, and the rest
    of the data code asks the kind (how to read, move, check and count its labels), so no task
    flag (dense, boxes, multilabel) is tested outside tasks/."""
    from kdstyles.data.labels import LABELS
    from kdstyles.tasks import TASKS

    for task in TASKS.values():
        assert task.label_kind in LABELS
        assert not any(hasattr(task, flag) for flag in ("dense", "boxes", "multilabel")), task.name
    keeper = ROOT / "data" / "labels.py"
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tasks" or path == keeper:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Attribute) and node.attr == "label_kind"), \
                f"{rel}:{node.lineno} reads a task's label kind; ask kdstyles.data.labels.labels_of(task)"
            if isinstance(node, ast.Attribute) and node.attr == "ndim" and "labels" in ast.unparse(node.value) \
                    and rel.parts[0] == "data" and str(rel) not in SHAPE_VALIDATORS:  # ask the kind instead
                pytest.fail(f"{rel}:{node.lineno} tells a label layout by its shape; ask the label kind")
            if isinstance(node, ast.Compare):  # kind == "mask", kind in ("mask", ...)
                named = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in LABELS]
                assert not named, f"{rel}:{node.lineno} tests for label kind '{named[0]}'; ask the kind " \
                                  "(kdstyles.data.labels)"


def test_monai_is_imported_without_transformers_which_still_imports_after():
    """MONAI's first import under kdstyles skips transformers' BERT (3 s a process); transformers
    itself still imports afterwards, for the Hugging Face teachers."""
    import subprocess
    import sys

    pytest.importorskip("transformers")
    code = ("import sys, kdstyles, monai\nassert 'transformers' not in sys.modules, 'imported with monai'\n"
            "import transformers\nprint(transformers.Dinov2Config.__name__)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-500:]
    assert found.stdout.strip() == "Dinov2Config"
