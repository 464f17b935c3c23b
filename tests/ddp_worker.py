"""Run by tests/test_distributed.py, with and without torchrun: a tiny experiment with
BatchNorm-free networks (per-process BatchNorm statistics would differ from one process),
so a 2-process run can be compared with a 1-process run of the same global batch."""

import sys

import torch
import torch.nn as nn

from kdstyles import Experiment
from kdstyles.common.distributed import current, teardown


class Net(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.GroupNorm(2, hidden), nn.ReLU(),
                                  nn.Conv2d(hidden, 8, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def networks():
    torch.manual_seed(123)
    return {"teacher": Net(16), "s1": Net(8), "s2": Net(6)}


class SegNet(nn.Module):
    """A BatchNorm-free 3D segmentation network (per-voxel logits for 3 classes)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, hidden, 3, padding=1), nn.GroupNorm(2, hidden), nn.ReLU(),
                                  nn.Conv3d(hidden, 3, 1))

    def forward(self, x):
        return self.body(x)


def volume_experiment(out: str, epochs: int) -> Experiment:
    """3D segmentation on 8^3 patches of 12^3 volumes, validated on whole volumes by sliding windows."""
    torch.manual_seed(123)
    nets = {"teacher": SegNet(8), "s1": SegNet(4), "s2": SegNet(4)}
    config = {"task": "segmentation", "routing": {"preset": "kdml"},
              "networks": {"teacher": {"arch": "custom"}, "students": {"s1": {"arch": "custom"},
                                                                        "s2": {"arch": "custom"}}},
              "data": {"spatial_dims": 3, "image_size": 16, "patch_size": 8, "train_samples": 16,
                       "val_samples": 5, "test_samples": 2, "batch_size": 8},
              "train": {"epochs": epochs}, "output": {"dir": out, "name": "run"}}
    return Experiment(config, networks=nets, quiet=True)


def main() -> None:
    out, epochs, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    resume = mode == "resume"
    taps = {"tap": "body.3"}  # 8 channels in every network: no adapter (adapters carry BatchNorm)
    config = {"networks": {"teacher": taps, "students": {"s1": taps, "s2": taps}},
              "data": {"image_size": 16, "train_samples": 64, "val_samples": 30, "test_samples": 10,
                       "batch_size": 16, "augment": {"hflip": True, "vflip": True},
                       # unlabelled images: each process takes its strided share, as of the labelled batch
                       "unlabeled": {"source": "synthetic", "samples": 24}, "unlabeled_batch_size": 8},
              "train": {"epochs": epochs}, "output": {"dir": out, "name": "run", "tensorboard": True}}
    if mode == "volumes":
        exp = volume_experiment(out, epochs)
        exp.fit()
        teardown()
        return
    if resume:
        exp = Experiment.from_run(f"{out}/run", overrides=[f"train.epochs={epochs}"], networks=networks(),
                                  quiet=True)
    else:
        exp = Experiment(config, networks=networks(), quiet=True)
    def stop_after_first_epoch(_trainer, epoch):
        if mode == "stop1" and epoch == 1:
            raise KeyboardInterrupt  # as if the job were interrupted after epoch 1

    try:
        exp.fit(resume=resume, callbacks=[stop_after_first_epoch])
    except KeyboardInterrupt:
        teardown()
        return
    info = current()
    state = {k: v.clone() for k, v in exp.cohort.state_dict().items()}
    torch.save(state, f"{out}/weights-rank{info.rank}.pt")
    teardown()


if __name__ == "__main__":
    main()
