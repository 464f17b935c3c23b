"""What a network costs where it runs: parameters, FLOPs per image and CPU latency, for model
cards (export) and the report's compression table (compare, report); a run is measured from
its folder alone."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..models.zoo import count_parameters, flops_per_image
from ..styles.routing import T


def median_ms(run: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``run()`` in milliseconds, after ``warmup`` calls."""
    times = []
    for i in range(repeats + warmup):
        t0 = time.perf_counter()
        run()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def cpu_latency_ms(model: nn.Module, sample: torch.Tensor, repeats: int = 20) -> float:
    """Median CPU latency of one forward at the sample's batch size."""
    model = model.cpu().eval()
    with torch.inference_mode():
        return median_ms(lambda: model(sample), repeats)


def measure_compression(run_dir: str | Path) -> list[dict[str, Any]]:
    """Parameters, FLOPs per image and CPU latency (batch 1 and 32) of every network of a run,
    and each one's size relative to the teacher (the report's compression table)."""
    from ..api import Experiment

    exp = Experiment.from_run(run_dir, quiet=True)
    info = exp.run_info()
    nets = exp.cohort.networks
    inputs = exp.inputs(info)
    teacher_params = count_parameters(nets[T]) if T in nets else None
    rows = []
    for name, net in nets.items():
        net.eval()
        one, many = (inputs.sample(n, random=True) for n in (1, 32))
        p = count_parameters(net)
        rows.append({"network": name, "parameters": p, "mflops": flops_per_image(net, one) / 1e6,
                     "latency_b1_ms": cpu_latency_ms(net, one), "latency_b32_ms": cpu_latency_ms(net, many, 5),
                     "relative_size": p / teacher_params if teacher_params else None})
    return rows
