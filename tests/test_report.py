"""Reports (kdstyles.report) from a comparison's files: the browser check, a single run."""

import json
import shutil
import subprocess

import pytest

from kdstyles.report import render


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const rows = document.querySelectorAll('table.results tr.row').length;
  document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, broken: broken, rows: rows}));
});
</script></body>"""


def test_report_renders_in_a_real_browser(comparison, tmp_path, cli):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed here (.ci/run installs Debian's chromium where it can)")
    out, _, _ = comparison
    assert cli("report", out)[0] == 0
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK))
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    marker = dom.split("data-check=\"", 1)[1].split("\"", 1)[0].replace("&quot;", '"')
    check = json.loads(marker)
    # 3 result tables (s1, s2, ensemble) x (teacher row + 2 presets); 5 plots, none broken
    assert check == {"images": 5, "broken": 0, "rows": 9}


def test_report_of_a_single_run(comparison, tmp_path):
    out, _, _ = comparison
    run = tmp_path / "one"
    shutil.copytree(out / "kd-seed0", run)
    path = render(run)
    text = path.read_text()
    assert "teacher (reference)" in text and "<img" in text


def test_results_csv_lacking_a_run_is_refused_wherever_its_paths_point(comparison, tmp_path):
    """results.csv names runs by paths a user may have written relative, absolute or before a
    move: all are read; a file that lacks an evaluated run of the manifest is one line."""
    import csv

    from kdstyles.errors import KDError
    from kdstyles.report import load_rows

    out, _, _ = comparison
    copy = tmp_path / "moved"
    shutil.copytree(out, copy)
    path = copy / "results.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))

    def write(rows_):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows_)

    write([r | {"run_dir": f"elsewhere/{r['run_dir'].rsplit('/', 1)[-1]}"} for r in rows])  # relative, moved
    assert len(load_rows(copy)) == len(rows)
    write([r for r in rows if not r["run_dir"].endswith("diverse-seed1")])
    with pytest.raises(KDError, match="lacks network '.*' of .*diverse-seed1"):
        load_rows(copy)
