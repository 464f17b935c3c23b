"""Whether feature taps record under torch.compile on this machine (a diagnostic, not a test).

    python benchmarks/compile_taps.py [--backends eager,aot_eager,inductor] [--quick]
                                      [--config configs/paper-r50-r18.yaml] [--size 64]

Part 1: a ResNet18 with a tapped layer, compiled with each backend, one forward inside the
tap's recording. Part 2: a cohort (default: the paper's pair, ImageNet weights off, ``diverse``:
feature edges, at 64 px) compiled as ``train.compile`` does, one joint training step in each
combination of precision (fp32, bf16 autocast), memory layout (contiguous, channels_last) and
whether an untapped forward (evaluation) ran first. One line per case: recorded, or the
error's last line (the traceback goes to stderr).

This found why ``train.compile`` lost the paper teacher's tap (``layer4.2.conv2``) on an H100:
a hook kept out of the graph (``torch.compiler.disable``) broke it, torch.compile then ran each
residual block as a frame of its own, and a block's compiled code, reused for a later block of
the same shape, skipped that block's hook (ResNet50 layer4.2, ResNet34 layer3.5; never the
first block of a shape, so ResNet18 taps passed). It happened on the CPU too, even with the
``eager`` backend; tests/test_taps.py now checks it. The hooks are traced into the graph since.
"""

from __future__ import annotations

import argparse
import itertools
import traceback
from contextlib import nullcontext

import torch

from kdstyles import Experiment
from kdstyles.engine.cohort import TrainStep
from kdstyles.models.taps import Tap
from kdstyles.models.zoo import build_network


def single(device: str, backend: str) -> str:
    net = build_network("resnet18", 3, 4, 64, widen=0.5).to(device)
    tap = Tap(net, ["layer3.1.conv2"], "diagnostic")
    net.compile(backend=backend)
    with tap.recording() as feats:
        net(torch.randn(2, 3, 64, 64, device=device))
    return f"recorded {tuple(feats['layer3.1.conv2'].shape)}"


def cohort_step(config: str, size: int, device: str, backend: str, bf16: bool, channels_last: bool,
                eval_first: bool) -> str:
    exp = Experiment(config, quiet=True, overrides=[
        "networks.teacher.pretrained=false", "networks.students.s1.pretrained=false",
        "networks.students.s2.pretrained=false", "data.normalize=dataset", f"data.image_size={size}",
        "data.train_samples=64", "data.val_samples=8", "data.test_samples=8", "data.batch_size=8"])
    cohort = exp.cohort
    fmt = torch.channels_last if channels_last else torch.preserve_format
    cohort.to(device, memory_format=fmt)
    for name in cohort.trainable:
        cohort.networks[name].compile(backend=backend)
    batch = next(iter(exp.data.loader("train", 8, train=True))).to(torch.device(device), fmt)
    x = batch.images
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if eval_first:
        cohort.eval()
        with torch.no_grad(), autocast:
            cohort(x, record=False)
    cohort.train()
    with autocast:
        losses = TrainStep(cohort)(batch)
    torch.stack([nl.total.float() for nl in losses.values()]).sum().backward()
    return "recorded every tap, step done"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="eager,aot_eager,inductor")
    ap.add_argument("--quick", action="store_true", help="part 2 with fp32, contiguous, training first only")
    ap.add_argument("--config", default="configs/paper-r50-r18.yaml", help="the cohort of part 2")
    ap.add_argument("--size", type=int, default=64, help="image size of part 2")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} on {device}")
    backends = args.backends.split(",")
    for backend in backends:
        try:
            print(f"single network  {backend:<10} {single(device, backend)}", flush=True)
        except Exception as exc:  # noqa: BLE001 (a diagnostic reports every failure and goes on)
            traceback.print_exc()
            print(f"single network  {backend:<10} failed: {str(exc).strip().splitlines()[-1]}", flush=True)
    cases = [(False, False, False)] if args.quick else list(itertools.product((False, True), repeat=3))
    for backend, (bf16, cl, eval_first) in itertools.product(backends, cases):
        label = (f"cohort {backend:<10} {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'contiguous':<13} "
                 f"{'eval first' if eval_first else 'train first'}")
        torch._dynamo.reset()
        try:
            print(f"{label}  {cohort_step(args.config, args.size, device, backend, bf16, cl, eval_first)}", flush=True)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            print(f"{label}  failed: {str(exc).strip().splitlines()[-1]}", flush=True)


if __name__ == "__main__":
    main()
