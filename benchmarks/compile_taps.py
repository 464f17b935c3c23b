"""Whether feature taps record under torch.compile on this machine (a diagnostic, not a test):
a ResNet18 with a tapped layer, compiled with each backend, one forward inside the tap's recording.

    python benchmarks/compile_taps.py
"""

from __future__ import annotations

import torch

from kdstyles.models.taps import Tap
from kdstyles.models.zoo import build_network


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} on {device}")
    for backend in ("eager", "aot_eager", "inductor"):
        net = build_network("resnet18", 3, 4, 64, widen=0.5).to(device)
        tap = Tap(net, ["layer3.1.conv2"], "diagnostic")
        net.compile(backend=backend)
        try:
            with tap.recording() as feats:
                net(torch.randn(2, 3, 64, 64, device=device))
            print(f"{backend:<10} recorded {tuple(feats['layer3.1.conv2'].shape)}")
        except Exception as exc:
            print(f"{backend:<10} failed: {str(exc).splitlines()[-1]}")


if __name__ == "__main__":
    main()
