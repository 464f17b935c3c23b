"""The manual (docs/, MkDocs): the configuration reference is current and complete, the
examples of "Extending kdstyles" run, and the site builds offline in strict mode and renders
in a real browser with its pictures."""

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def reference():
    return runpy.run_path(str(DOCS / "gen_config_reference.py"))


def test_the_configuration_reference_is_current(reference):
    assert (DOCS / "config-reference.md").read_text() == reference["render"](), \
        "docs/config-reference.md is stale: run python docs/gen_config_reference.py"


def test_every_config_key_is_described(reference):
    assert reference["missing_descriptions"]() == []
    text = (DOCS / "config-reference.md").read_text()
    from kdstyles.config import ExperimentConfig

    for section, model in ExperimentConfig.model_fields.items():  # every section and its keys are listed
        nested = getattr(model.annotation, "model_fields", {})
        for key in nested:
            assert f"| `{section}.{key}` |" in text or f"## `{section}.{key}`" in text, f"{section}.{key}"
    assert "| `data.augment.hflip` | true/false | `true` |" in text
    assert "| `train.precision` |" in text and "`bf16`" in text
    assert "### `dkd`" in text and "| `styles.dkd.beta` |" in text


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


def test_the_extending_examples_run(tmp_path, monkeypatch, kept_registries):
    """Each example of docs/extending.md runs as written (``workdir``: a scratch folder); a block
    whose first line is ``# file: NAME`` is a plugin file, written to the next block's folder.
    What the examples register is theirs alone (``kept_registries``)."""
    blocks = python_blocks(DOCS / "extending.md")
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "example0"
    for i, code in enumerate(blocks):
        work.mkdir(exist_ok=True)
        if code.startswith("# file: "):
            (work / code.split("\n", 1)[0].removeprefix("# file: ")).write_text(code)
            continue
        exec(compile(code, f"docs/extending.md example {i + 1}", "exec"), {"workdir": work, "__name__": "example"})
        work = tmp_path / f"example{i + 1}"
    assert any((tmp_path / "example0").rglob("last.pt"))  # the style's example trained a run
    assert any((tmp_path / "example1").rglob("last.pt"))  # so did the plugin's


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_builds_offline_with_every_page(site):
    nav = re.findall(r":\s+([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert len(nav) >= 18
    for page in nav:
        html = (site / page.replace(".md", ".html")).read_text()
        assert "<h1" in html, page
        # nothing fetched from elsewhere when the page is read: no web fonts, scripts or styles off the site
        assert not re.search(r"""(src|href)="https?://(?!127\.0\.0\.1)[^"]*\.(js|css|woff2?)""", html), page
    api = (site / "api.html").read_text()
    assert "from_run" in api and "Inputs" in api  # reference from the docstrings (mkdocstrings)
    assert "Labels" in (site / "extending.html").read_text()


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const h1 = document.querySelector('article h1');
  const tables = document.querySelectorAll('article table').length;
  document.body.setAttribute('data-check', JSON.stringify(
    {images: imgs.length, broken: broken, title: h1 ? h1.textContent.trim() : null, tables: tables}));
});
</script></body>"""


def _render(chromium: str, page: Path, profile: Path) -> dict:
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", CHECK))
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    marker = dom.split("data-check=\"", 1)[1].split("\"", 1)[0].replace("&quot;", '"')
    return json.loads(marker)


def test_the_pages_render_in_a_real_browser_with_their_pictures(site, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed here (.ci/run installs Debian's chromium where it can)")
    pictures = {p.name for p in (DOCS / "images").glob("*.png")}
    assert {"report-table.png", "overlay-segmentation.png", "overlay-detection.png"} <= pictures
    shown = set()
    for page, title in (("index", "kdstyles"), ("compare", "Compare and the answer"), ("segmentation", "Segmentation"),
                        ("detection", "Detection"), ("training", "Training, resume and failures"),
                        ("config-reference", "Configuration reference")):
        check = _render(chromium, site / f"{page}.html", tmp_path / "profile")
        assert check["title"].startswith(title), (page, check)
        assert check["broken"] == [], (page, check)
        assert check["tables"] >= 1 or page in ("segmentation",), (page, check)
        shown |= {m for m in re.findall(r'src="images/([^"]+)"', (site / f"{page}.html").read_text())}
    assert pictures <= shown, f"pictures no page shows: {sorted(pictures - shown)}"
