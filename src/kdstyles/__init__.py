"""kdstyles: compress biomedical image models by training a teacher and compact students
together, each student learning in its own style (predictions, feature maps), the students
sharing what they learn (knowledge distillation + mutual learning, diversified knowledge)."""

__version__ = "0.1.0"

from .api import Experiment  # noqa: E402
from .cohort import Cohort, NetLoss, as_target, build_cohort  # noqa: E402
from .config import ExperimentConfig, load_config  # noqa: E402
from .errors import KDError, TrainingDiverged  # noqa: E402
from .routing import PRESETS, Edge, resolve_edges  # noqa: E402
from .styles import STYLES, NetOutput, Style, StyleOptions, register  # noqa: E402

__all__ = [
    "Cohort", "Edge", "Experiment", "ExperimentConfig", "KDError", "NetLoss", "NetOutput", "PRESETS", "STYLES",
    "Style", "StyleOptions", "TrainingDiverged", "as_target", "build_cohort", "load_config", "register",
    "resolve_edges", "__version__",
]
