"""Routing as data: who teaches whom, in which style, with which weight.

A method is a list of :class:`Edge`. Presets (METHOD.md section 5) are lists of
``(source, target, style)`` triples; a custom list of edges in the config is resolved the
same way. Weights default by the source: ``loss.teacher_weight`` for edges from the
teacher, ``loss.peer_weight`` for edges between students. Style options default from the
style's own defaults, then ``styles.<name>`` in the config, then the edge's ``options``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .errors import KDError
from .styles import STYLES, StyleOptions

if TYPE_CHECKING:
    from .config import ExperimentConfig

T, S1, S2 = "teacher", "s1", "s2"
P, F = "predictions", "features"

PRESETS: dict[str, list[tuple[str, str, str]]] = {
    "student": [],
    "kd": [(T, S1, P), (T, S2, P)],
    "fitnet": [(T, S1, F), (T, S2, F)],
    "dml": [(S1, S2, P), (S2, S1, P)],
    "kdml": [(T, S1, P), (T, S2, P), (S1, S2, P), (S2, S1, P)],
    "diverse": [(T, S1, P), (T, S2, F), (S1, S2, P), (S2, S1, F)],
    "diverse-full": [(T, S1, P), (T, S2, F), (S1, S2, P), (S2, S1, P), (S1, S2, F), (S2, S1, F)],
}

# CTSL-MKT (METHOD.md section 7): students only; each learns from every peer's softened
# predictions and instance relations, and from its own earlier state. Options the preset
# sets by default (style defaults < these < config `styles:` < an edge's own options).
CTSL_MKT_OPTIONS = {P: {"temperature": 3.0, "t2_scaling": True}, "self": {"temperature": 3.0, "mode": "ema"}}


def preset_triples(name: str, students: list[str]) -> list[tuple[str, str, str]]:
    """A preset's (src, dst, style) triples; ``ctsl-mkt`` spans all students of the cohort."""
    if name == "ctsl-mkt":
        pairs = [(a, b) for b in students for a in students if a != b]
        return [(a, b, st) for a, b in pairs for st in (P, "relations")] + [(s, s, "self") for s in students]
    return PRESETS[name]


def preset_options(name: str, style: str) -> dict[str, Any]:
    return CTSL_MKT_OPTIONS.get(style, {}) if name == "ctsl-mkt" else {}


@dataclass(frozen=True)
class Edge:
    """One knowledge transfer: ``src`` teaches ``dst`` in ``style`` with ``weight``."""

    src: str
    dst: str
    style: str
    weight: float
    options: StyleOptions

    @property
    def key(self) -> str:
        return f"{self.style}<-{self.src}"

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} {self.style} (w={self.weight:g})"


def check_style_options(style: str, options: dict[str, Any], where: str) -> StyleOptions:
    """Validate ``options`` against the style's Options model; one-line KDError naming ``where``."""
    if style not in STYLES:
        raise KDError(f"{where}: unknown style '{style}'; allowed: {', '.join(STYLES)}")
    try:
        return STYLES[style].Options.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(STYLES[style].Options.model_fields)
            raise KDError(f"{where}.{key}: unknown option of style '{style}'; allowed: {allowed}") from None
        raise KDError(f"{where}.{key}: {first['msg']} (got {first.get('input')!r})") from None


def resolve_edges(cfg: "ExperimentConfig") -> list[Edge]:
    """Expand the config's preset or custom edges into validated :class:`Edge` objects."""
    nodes = {T, *cfg.networks.students}
    if cfg.routing.edges is not None:
        triples = [(e.src, e.dst, e.style, e.weight, {}, e.options, f"routing.edges.{i}")
                   for i, e in enumerate(cfg.routing.edges)]
    else:
        preset = cfg.routing.label
        triples = [(s, d, st, None, preset_options(preset, st), {}, f"routing.preset '{preset}'")
                   for s, d, st in preset_triples(preset, list(cfg.networks.students))]
    edges = []
    for src, dst, style, weight, defaults, options, where in triples:
        for role, node in (("src", src), ("dst", dst)):
            if node not in nodes:
                raise KDError(f"{where}: {role} '{node}' is not a network of this experiment; "
                              f"networks: {', '.join(sorted(nodes))}")
        if style in STYLES and STYLES[style].self_edge != (src == dst):
            need = "its src and dst must be the same network" if STYLES[style].self_edge else \
                "an edge joins two different networks"
            raise KDError(f"{where}: {src} -> {dst} in style '{style}': {need}")
        if dst == T and cfg.networks.teacher.mode == "offline":
            raise KDError(f"{where}: the offline teacher is frozen and cannot receive knowledge (dst: teacher)")
        merged = {**defaults, **cfg.styles.get(style, {}), **options}
        opts = check_style_options(style, merged, where if "edges" in where else f"styles.{style}")
        if weight is None:
            weight = (cfg.loss.self_weight if src == dst else
                      cfg.loss.teacher_weight if src == T else cfg.loss.peer_weight)
        edges.append(Edge(src, dst, style, float(weight), opts))
    return edges


def used_networks(cfg: "ExperimentConfig", edges: list[Edge]) -> list[str]:
    """The networks a run builds: every student, and the teacher when an edge uses it."""
    students = list(cfg.networks.students)
    uses_teacher = any(T in (e.src, e.dst) for e in edges)
    return ([T] if uses_teacher else []) + students
