"""Make the manual's pictures from real runs on the embedded data (nothing drawn by hand):
the report of the demo's comparison (its findings and main table as headless Chromium shows
report.html, and two of its plots), a segmentation and a detection overlay (as ``evaluate`` draws them), and
TensorBoard's scalars of a run (TensorBoard served locally, shown by Chromium).

    python docs/gen_screenshots.py [--work runs/docs-pictures]

needs the dev environment (``make venv``) and Chromium; writes docs/images/*.png. Runs are
the demo's (about 3 minutes on 2 CPU cores) and two short runs of the shipped segmentation and
detection configs; finished runs are reused when it runs again.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent
IMAGES = HERE / "images"
KDSTYLES = [sys.executable, "-m", "kdstyles"]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        sys.exit("Chromium is needed for the screenshots (Debian: apt-get install chromium)")
    return found


def screenshot(url: str, out: Path, width: int, height: int, profile: Path, wait_ms: int = 5000) -> Image.Image:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={profile}", f"--window-size={width},{height}",
                    f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    return Image.open(out)


def save(image: Image.Image, name: str) -> None:
    IMAGES.mkdir(exist_ok=True)
    path = IMAGES / name
    image.convert("RGB").save(path, optimize=True)
    print(f"wrote {path} ({image.width}x{image.height})")


def crop_to_content(image: Image.Image, pad: int = 12) -> Image.Image:
    """The screenshot without the empty page below (and right of) what was drawn."""
    grey = image.convert("L").point(lambda v: 255 if v < 250 else 0)
    box = grey.getbbox()
    if box is None:
        return image
    return image.crop((0, 0, min(image.width, box[2] + pad), min(image.height, box[3] + pad)))


def report(work: Path, profile: Path) -> Path:
    """The demo's comparison (``kdstyles demo``, as a user runs it): the top of its report.html
    as Chromium shows it, and two of its plots side by side. Returns the comparison folder."""
    out = work / "demo"
    subprocess.run([*KDSTYLES, "demo", "--out", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    shot = crop_to_content(screenshot((out / "report.html").resolve().as_uri(), work / "report.png", 1100, 1000,
                                      profile))
    save(shot, "report-table.png")
    html = (out / "report.html").read_text()
    plots = [Image.open(io.BytesIO(base64.b64decode(b))) for b in
             re.findall(r'src="data:image/png;base64,([^"]+)"', html)[:2]]  # accuracy vs size, training curves
    height = max(p.height for p in plots)
    side = Image.new("RGB", (sum(p.width for p in plots) + 20 * (len(plots) - 1), height), "white")
    x = 0
    for p in plots:
        side.paste(p, (x, 0))
        x += p.width + 20
    save(side, "report-plots.png")
    return out


def overlay(work: Path, config: str) -> Path:
    """Train the shipped config briefly and evaluate it; its first overlay picture."""
    name = f"{Path(config).stem}-overlays"
    run = work / name
    if not sorted((run / "overlays").rglob("*.png")):
        subprocess.run([*KDSTYLES, "train", str(HERE.parent / config), "--quiet", *sets([
            "train.epochs=6", "data.train_samples=400", f"output.dir={work}", f"output.name={name}",
            "eval.overlays=2"])], check=True)
    return sorted((run / "overlays").rglob("*.png"))[0]


def tensorboard(logdir: Path, work: Path, profile: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        time.sleep(5)  # the first scan of the event files
        shot = screenshot(f"http://127.0.0.1:{port}/#timeseries", work / "tensorboard.png", 1400, 1000, profile,
                          wait_ms=15000)
        save(shot, "tensorboard-scalars.png")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/docs-pictures"))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    profile = work / "chromium-profile"
    demo = report(work, profile)
    save(Image.open(overlay(work, "configs/segmentation.yaml")), "overlay-segmentation.png")
    save(Image.open(overlay(work, "configs/detection.yaml")), "overlay-detection.png")
    tensorboard(demo, work, profile)


if __name__ == "__main__":
    main()
