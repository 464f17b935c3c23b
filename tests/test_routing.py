import re
from pathlib import Path

import pytest

from kdstyles import KDError, load_config
from kdstyles.styles.routing import PRESETS
from conftest import THREE

P, F = "predictions", "features"
METHOD_PAGE = Path(__file__).parents[1] / "docs" / "method.md"
ROLES = {"T": "teacher", "S1": "s1", "S2": "s2"}


def method_table() -> dict[str, set[tuple[str, str, str]]]:
    """The table of presets in the project's method page (docs/method.md, "Every preset's
    edges"), read as (src, dst, style) sets: rows ``| `name` | T→S1 predictions; ... | ... |``."""
    text = METHOD_PAGE.read_text()
    section = text[text.index("## Every preset's edges"):].split("\n## ", 1)[0]
    table = {}
    for row in re.findall(r"^\| `([a-z0-9-]+)`[^|]*\| ([^|]+) \|", section, re.M):
        name, cell = row
        edges = set()
        if cell.strip() != "none":
            for item in cell.split(";"):
                pair, style = item.split()
                src, dst = pair.split("→")
                edges.add((ROLES[src], ROLES[dst], style))
        table[name] = edges
    return table


METHOD_TABLE = method_table()


def test_the_method_page_lists_every_preset_with_its_edges():
    assert len(METHOD_TABLE) >= 13 and METHOD_TABLE["student"] == set()
    assert METHOD_TABLE["diverse"] == {("teacher", "s1", "predictions"), ("teacher", "s2", "features"),
                                       ("s1", "s2", "predictions"), ("s2", "s1", "features")}


@pytest.mark.parametrize("preset", sorted(METHOD_TABLE))
def test_preset_expansion_matches_method_table(preset):
    from kdstyles.styles import STYLES

    frozen = any(STYLES[st].frozen_source for _, _, st in METHOD_TABLE[preset])  # simkd: an offline teacher
    offline = ["networks.teacher.mode=offline", "networks.teacher.checkpoint=teacher.pt"] if frozen else []
    edges = (load_config(None, [f"routing.preset={preset}", *offline])).edges
    assert {(e.src, e.dst, e.style) for e in edges} == METHOD_TABLE[preset]
    assert len(edges) == len(METHOD_TABLE[preset])
    for e in edges:  # weights by source (the method page's defaults)
        assert e.weight == (0.2 if e.src == "teacher" else 0.1)


def test_every_preset_is_covered():
    assert set(PRESETS) == set(METHOD_TABLE)


def test_default_preset_is_diverse():
    cfg = load_config()
    assert cfg.routing.label == "diverse"
    assert {(e.src, e.dst, e.style) for e in cfg.edges} == METHOD_TABLE["diverse"]


def test_custom_edges_with_weights_and_options():
    raw = {"routing": {"edges": [
        {"src": "teacher", "dst": "s1", "style": "predictions", "options": {"temperature": 4}},
        {"src": "s1", "dst": "s2", "style": "features", "weight": 0.7, "options": {"normalize": "l2"}},
    ]}, "styles": {"predictions": {"t2_scaling": False}}}
    from kdstyles.config import build_config

    edges = (build_config(raw)).edges
    assert [(e.src, e.dst, e.style, e.weight) for e in edges] == [
        ("teacher", "s1", "predictions", 0.2), ("s1", "s2", "features", 0.7)]
    assert edges[0].options.temperature == 4 and edges[0].options.t2_scaling is False
    assert edges[1].options.normalize == "l2"


def test_style_defaults_from_config_reach_preset_edges():
    edges = (load_config(None, ["routing.preset=kd", "styles.predictions.temperature=4"])).edges
    assert all(e.options.temperature == 4 and e.options.t2_scaling for e in edges)


@pytest.mark.parametrize("edge, message", [
    ({"src": "teacher", "dst": "s9", "style": "predictions"}, "dst 's9' is not a network"),
    ({"src": "s1", "dst": "s1", "style": "predictions"},
     "routing.edges.0: s1 -> s1 in style 'predictions': an edge joins two different networks"),
    ({"src": "s1", "dst": "s2", "style": "self"},
     "routing.edges.0: s1 -> s2 in style 'self': its src and dst must be the same network"),
    ({"src": "teacher", "dst": "s1", "style": "telepathy"}, "unknown style 'telepathy'; allowed: attention, cka, dist, dkd, embedding, features"),
    ({"src": "teacher", "dst": "s1", "style": "predictions", "options": {"temp": 2}},
     "routing.edges.0.temp: unknown option of style 'predictions'; allowed: temperature, t2_scaling"),
    ({"src": "teacher", "dst": "s1", "style": "predictions", "options": {"temperature": -1}},
     "routing.edges.0.temperature"),
])
def test_bad_edges_fail_with_one_line(edge, message):
    from kdstyles.config import build_config

    with pytest.raises(KDError) as err:
        build_config({"routing": {"edges": [edge]}})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_offline_teacher_cannot_receive():
    from kdstyles.config import build_config

    raw = {"networks": {"teacher": {"mode": "offline", "checkpoint": "x.pt"}},
           "routing": {"edges": [{"src": "s1", "dst": "teacher", "style": "predictions"}]}}
    with pytest.raises(KDError, match="offline teacher is frozen"):
        build_config(raw)


def test_preset_and_edges_together_is_an_error():
    with pytest.raises(KDError, match="either preset or edges"):
        load_config(None, ["routing.preset=kd", "routing.edges=[]"])


def test_ctsl_mkt_expands_over_all_students():
    cfg = load_config(None, ["routing.preset=ctsl-mkt", *THREE])
    edges = cfg.edges
    got = {(e.src, e.dst, e.style) for e in edges}
    students = ["s1", "s2", "s3"]
    expected = {(a, b, st) for a in students for b in students if a != b for st in ("predictions", "relations")}
    expected |= {(s, s, "self") for s in students}
    assert got == expected
    pred = next(e for e in edges if e.style == "predictions")
    assert pred.options.temperature == 3.0 and pred.options.t2_scaling and pred.weight == 0.1
    assert next(e for e in edges if e.style == "self").weight == cfg.loss.self_weight
    cfg4 = load_config(None, ["routing.preset=ctsl-mkt", "styles.predictions.temperature=5"])
    assert all(e.options.temperature == 5 for e in cfg4.edges if e.style == "predictions")


def _students(tmp_path, names):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("networks:\n  students:\n" + "".join(f"    {n}: {{arch: resnet10, widen: 0.25}}\n" for n in names))
    return cfg


def test_presets_fill_their_roles_with_the_students_a_config_names(tmp_path):
    """Students named otherwise take the presets' s1 and s2 roles in listed order; one student
    keeps the teacher's edge to it (kd, fitnet) and cannot keep an edge between students."""
    cfg = load_config(_students(tmp_path, ["mobile", "tiny"]))
    assert {(e.src, e.dst, e.style) for e in cfg.edges} == {
        ("teacher", "mobile", P), ("teacher", "tiny", F), ("mobile", "tiny", P), ("tiny", "mobile", F)}
    # a name that fits a role keeps it; the other role goes to the next student
    cfg = load_config(_students(tmp_path, ["big", "s1"]), ["routing.preset=kdml"])
    assert {(e.src, e.dst) for e in cfg.edges} == {("teacher", "s1"), ("teacher", "big"), ("s1", "big"),
                                                   ("big", "s1")}
    one = _students(tmp_path, ["s1"])
    assert [(e.src, e.dst, e.style) for e in load_config(one, ["routing.preset=kd"]).edges] == [("teacher", "s1", P)]
    assert [(e.src, e.dst, e.style) for e in load_config(one, ["routing.preset=fitnet"]).edges] == [
        ("teacher", "s1", F)]
    with pytest.raises(KDError, match=r"routing.preset 'diverse': its s1 -> s2 predictions edge joins two students, "
                                      r"and networks.students has one \(s1; "):
        load_config(one)


def test_presets_command_lists_what_each_preset_does_with_one_student(monkeypatch, capsys):
    import sys

    from kdstyles.cli import main

    monkeypatch.setattr(sys, "argv", ["kdstyles", "presets", "--students", "1"])
    with pytest.raises(SystemExit) as done:
        main()
    lines = dict(ln.split(": ", 1) for ln in capsys.readouterr().out.strip().splitlines())
    assert done.value.code in (0, None)
    assert lines["kd"] == "teacher->s1 predictions" and lines["diverse"] == "(needs two students)"
