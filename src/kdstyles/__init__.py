"""kdstyles: compress biomedical image models by training a teacher and compact students
together, each student learning in its own style (predictions, feature maps), the students
sharing what they learn (knowledge distillation + mutual learning, diversified knowledge).

Names are imported lazily, so ``kdstyles predict`` on an exported ONNX model runs without
torch installed.
"""

from importlib import import_module

from .common.monai_import import install as _install

__version__ = "0.1.0"
_install()  # MONAI's first import skips transformers' BERT (3 s a process; common/monai_import.py)

_EXPORTS = {
    "Experiment": "api", "Cohort": "engine.cohort", "NetLoss": "engine.cohort", "as_target": "engine.cohort",
    "build_cohort": "engine.cohort", "ExperimentConfig": "config", "load_config": "config", "KDError": "errors",
    "TrainingDiverged": "errors", "PRESETS": "styles.routing", "Edge": "styles.routing",
    "resolve_edges": "styles.routing", "TASKS": "tasks", "STYLES": "styles", "NetOutput": "styles",
    "Style": "styles", "StyleOptions": "styles", "register": "styles",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'kdstyles' has no attribute '{name}'")
