"""Routing as data: who teaches whom, in which style, with which weight.

A method is a list of :class:`Edge`. A preset (docs/method.md, "Every preset's edges", and the modern logit
losses' presets beside it) is a list of
``(source, target, style)`` triples, or a function of the students for presets that span
the whole cohort (CTSL-MKT), plus the style options it sets by default. A custom list of
edges in the config is resolved the same way. Weights default by the source:
``loss.teacher_weight`` for edges from the teacher, ``loss.peer_weight`` between
students, ``loss.self_weight`` for self edges. Style options default from the style's own
defaults, then the preset's, then ``styles.<name>`` in the config, then the edge's own.

The config validates a routing once, when it is loaded (``ExperimentConfig.edges``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import KDError
from . import STYLES, StyleOptions

TEACHER = T = "teacher"
ENSEMBLE = "ensemble"  # the students' mean, evaluated like a network
PREDICTIONS, FEATURES, DKD, DIST, MLKD, SIMKD = "predictions", "features", "dkd", "dist", "mlkd", "simkd"
S1, S2 = "s1", "s2"

Triple = tuple[str, str, str]


@dataclass(frozen=True)
class Preset:
    """A named routing: its edges (a list, or a function of the students) and the style
    options it sets by default."""

    edges: list[Triple] | Callable[[list[str]], list[Triple]]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_only: bool = False  # the run builds and trains the teacher alone (on labels)

    def triples(self, students: list[str]) -> list[Triple]:
        """The preset's edges between these students. The roles ``s1`` and ``s2`` go to the
        students of those names, else to the others in the order they are listed; with one
        student the teacher's edge to the missing role goes (``kd``, ``fitnet``: one student
        taught), while an edge between students cannot be kept and is an error."""
        if callable(self.edges):
            return self.edges(students)
        free = [s for s in students if s not in (S1, S2)]
        roles = {r: r if r in students else (free.pop(0) if free else None) for r in (S1, S2)}
        out = []
        for src, dst, style in self.edges:
            a, b = roles.get(src, src), roles.get(dst, dst)
            if b is None and src == T:
                continue
            if a is None or b is None:
                raise KDError(f"its {src} -> {dst} {style} edge joins two students, and networks.students has one "
                              f"({', '.join(students)}; a config's students section lists every student): add "
                              "a second, or use kd, fitnet or student")
            out.append((a, b, style))
        return out


def _ctsl_mkt(students: list[str]) -> list[Triple]:
    """CTSL-MKT (docs/method.md): students only; each learns from every peer's softened
    predictions and instance relations, and from its own earlier state."""
    pairs = [(a, b) for b in students for a in students if a != b]
    return [(a, b, st) for a, b in pairs for st in (PREDICTIONS, "relations")] + [(s, s, "self") for s in students]


PRESETS: dict[str, Preset] = {
    "student": Preset([]),
    "teacher": Preset([], teacher_only=True),  # the teacher alone, on labels: a shared teacher's run
    "kd": Preset([(T, S1, PREDICTIONS), (T, S2, PREDICTIONS)]),
    "fitnet": Preset([(T, S1, FEATURES), (T, S2, FEATURES)]),
    "dml": Preset([(S1, S2, PREDICTIONS), (S2, S1, PREDICTIONS)]),
    "kdml": Preset([(T, S1, PREDICTIONS), (T, S2, PREDICTIONS), (S1, S2, PREDICTIONS), (S2, S1, PREDICTIONS)]),
    "diverse": Preset([(T, S1, PREDICTIONS), (T, S2, FEATURES), (S1, S2, PREDICTIONS), (S2, S1, FEATURES)]),
    "diverse-full": Preset([(T, S1, PREDICTIONS), (T, S2, FEATURES), (S1, S2, PREDICTIONS), (S2, S1, PREDICTIONS),
                            (S1, S2, FEATURES), (S2, S1, FEATURES)]),
    "ctsl-mkt": Preset(_ctsl_mkt, {PREDICTIONS: {"temperature": 3.0, "t2_scaling": True},
                                   "self": {"temperature": 3.0, "mode": "ema"}}),
    # The field's stronger logit losses in their classic use: the teacher's predictions to every
    # student through DKD (Zhao et al. 2022) or DIST (Huang et al. 2022) ...
    "dkd": Preset([(T, S1, DKD), (T, S2, DKD)]),
    "dist": Preset([(T, S1, DIST), (T, S2, DIST)]),
    # ... and the paper's diversified routing with them on the teacher's prediction edge (between
    # students the KL stays: DKD and DIST from an equally weak peer cost its learner 4-5 points
    # on the embedded data, README "Students that reach their teacher").
    "diverse-dkd": Preset([(T, S1, DKD), (T, S2, FEATURES), (S1, S2, PREDICTIONS), (S2, S1, FEATURES)]),
    "diverse-dist": Preset([(T, S1, DIST), (T, S2, FEATURES), (S1, S2, PREDICTIONS), (S2, S1, FEATURES)]),
    # Multi-level logit distillation (Jin et al. 2023): instance, batch and class levels at five temperatures
    "mlkd": Preset([(T, S1, MLKD), (T, S2, MLKD)]),
    # The teacher's classifier reused (SimKD, Chen et al. 2022): each student's features projected into the
    # teacher's and classified by its frozen head (an offline teacher) ...
    "simkd": Preset([(T, S1, SIMKD), (T, S2, SIMKD)]),
    # ... and the paper's diversified routing with it: s1 learns through the teacher's head, s2 from the
    # teacher's predictions, and the two exchange predictions (s1's head is the teacher's classifier, so its
    # predictions carry the teacher's class geometry to s2).
    "diverse-simkd": Preset([(T, S1, SIMKD), (T, S2, PREDICTIONS), (S1, S2, PREDICTIONS), (S2, S1, PREDICTIONS)]),
}
DEFAULT_PRESET = "diverse"


class EdgeConfig(BaseModel):
    """One knowledge transfer in a config: ``src`` teaches ``dst`` in ``style``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    src: str = Field(description="the network that teaches: teacher or a student's name")
    dst: str = Field(description="the network that learns (src itself for a self edge)")
    style: str = Field(description="the learning style (the method page lists every style)")
    weight: Optional[float] = Field(None, ge=0, description="default: loss.teacher_weight or loss.peer_weight")
    options: dict[str, Any] = Field(default_factory=dict, description="the style's options for this edge "
                                                                      "(style options, below)")


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    preset: Optional[Literal[tuple(PRESETS)]] = Field(  # type: ignore[valid-type]
        None, description="a named routing (the method page's table); default: diverse")
    edges: Optional[list[EdgeConfig]] = Field(None, description="a routing of your own, edge by edge, instead of a "
                                                                "preset")

    @model_validator(mode="after")
    def _one_of(self) -> "RoutingConfig":
        if self.preset is not None and self.edges is not None:
            raise ValueError("give either preset or edges, not both")
        return self

    @property
    def teacher_only(self) -> bool:
        """Whether the run trains the teacher alone (preset ``teacher``: no student is built)."""
        return self.edges is None and PRESETS[self.label].teacher_only

    @property
    def label(self) -> str:
        """The preset name, 'custom' for an edge list, the default preset when neither is given."""
        if self.edges is not None:
            return "custom"
        return self.preset or DEFAULT_PRESET


@dataclass(frozen=True)
class Edge:
    """One knowledge transfer: ``src`` teaches ``dst`` in ``style`` with ``weight``."""

    src: str
    dst: str
    style: str
    weight: float
    options: StyleOptions

    @property
    def term(self) -> str:
        """The name of this edge's loss term in logs and metrics.csv (``style<-source``)."""
        return f"{self.style}<-{self.src}"

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} {self.style} (w={self.weight:g})"

    def config(self) -> EdgeConfig:
        """This edge as a config's ``routing.edges`` item: its resolved weight and options."""
        return EdgeConfig(src=self.src, dst=self.dst, style=self.style, weight=self.weight,
                          options=self.options.model_dump(exclude_none=True))


class Weights(Protocol):
    teacher_weight: float
    peer_weight: float
    self_weight: float


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
        raise KDError(f"{where}.{key}: {first['msg'].removeprefix('Value error, ')} (got {first.get('input')!r})") \
            from None


def resolve_edges(routing: RoutingConfig, students: list[str], styles: dict[str, dict[str, Any]],
                  weights: Weights, offline_teacher: bool = False) -> list[Edge]:
    """Expand a routing (preset or custom edges) into validated :class:`Edge` objects."""
    nodes = {T, *students}
    if routing.edges is not None:
        triples = [(e.src, e.dst, e.style, e.weight, {}, e.options, f"routing.edges.{i}")
                   for i, e in enumerate(routing.edges)]
    else:
        preset = PRESETS[routing.label]
        where = f"routing.preset '{routing.label}'"
        try:
            found = preset.triples(students)
        except KDError as exc:
            raise KDError(f"{where}: {exc}") from None
        triples = [(s, d, st, None, preset.options.get(st, {}), {}, where) for s, d, st in found]
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
        if dst == T and offline_teacher:
            raise KDError(f"{where}: the offline teacher is frozen and cannot receive knowledge (dst: teacher)")
        if style in STYLES and STYLES[style].frozen_source and not (src == T and offline_teacher):
            raise KDError(f"{where}: style '{style}' reuses what a frozen network knows; its src must be an offline "
                          "teacher (networks.teacher.mode: offline, with its checkpoint), not "
                          f"{'an online teacher' if src == T else src}")
        if style in STYLES and STYLES[style].reshapes_learner and any(
                e.dst == dst and STYLES[e.style].reshapes_learner for e in edges):
            raise KDError(f"{where}: {dst} already receives a '{style}' edge, which changes its head; one per network")
        merged = {**defaults, **styles.get(style, {}), **options}
        opts = check_style_options(style, merged, where if "edges" in where else f"styles.{style}")
        if weight is None:
            weight = (weights.self_weight if src == dst else
                      weights.teacher_weight if src == T else weights.peer_weight)
        parts = STYLES[style].split(opts)  # a features edge at several depths: one edge per depth
        edges += [Edge(src, dst, style, float(weight) / len(parts), part) for part in parts]
    return edges


def used_networks(students: list[str], edges: list[Edge], teacher_only: bool = False) -> list[str]:
    """The networks a run builds: every student, and the teacher when an edge uses it (the
    teacher alone for a teacher-only routing)."""
    if teacher_only:
        return [T]
    uses_teacher = any(T in (e.src, e.dst) for e in edges)
    return ([T] if uses_teacher else []) + list(students)
