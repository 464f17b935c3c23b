"""The cohort: every network of an experiment and the adapters of its edges, as one module.

``forward`` runs each network once on the batch (an offline teacher under
``torch.inference_mode()`` in eval mode) and records the tapped feature maps.
``losses`` turns the outputs into each network's loss, edge by edge:

    L_i = CE(y, z_i)                                                 (no incoming edge)
    L_i = a * CE(y, z_i) + (1 - a) * sum_e w_e * L_style(e)          (otherwise)

Every tensor taken from another network (or from a network's frozen shadow, for
self-distillation) goes through :func:`as_target` (detach), in this one place, so one
network's loss never trains another; an adapter belongs to its receiver. Summing the losses and calling ``backward`` once therefore gives each network
exactly the gradient of its own loss.
"""

from __future__ import annotations

import copy
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..store import checkpoints
from ..config import ExperimentConfig, NetworkConfig
from ..common.dims import dims
from ..errors import KDError
from ..models.adapters import make_adapter
from ..models.taps import Tap, resolve_module
from ..models.zoo import MIN_MAP
from ..styles.routing import T, Edge, used_networks
from ..store.runfolder import RunFolder
from ..styles import KNOWLEDGE, STYLES, Context, NetOutput
from ..tasks import TASKS, Task


def as_target(t: torch.Tensor) -> torch.Tensor:
    """A tensor from another network as a fixed target: no gradient flows back through it."""
    t = t.detach()
    return t.clone() if t.is_inference() else t  # inference tensors cannot be saved for backward


@dataclass
class NetLoss:
    """One network's loss: the total that is optimised and its raw (unweighted) terms."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def network_seed(seed: int, name: str) -> int:
    """Each network's initialisation depends only on the run seed and its own name, so a
    student starts from the same weights whichever preset it is trained with."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


class OutputCache:
    """Frozen networks' outputs kept per training sample (``n`` samples): a batch whose samples
    are all cached skips those networks' forward (offline teacher, no random augmentation).
    What a run took from a file (:mod:`kdstyles.store.outputs`) is ``unverified`` until the
    first batch served from it matched a fresh forward (:meth:`Cohort.forward`)."""

    def __init__(self, names, n: int):
        self.n = n
        self.stores: dict[str, dict | None] = {name: None for name in names}
        self.unverified: set[str] = set()
        self.changed = False  # outputs put since the store was last written or read

    def get(self, name: str, keys: torch.Tensor) -> NetOutput | None:
        store = self.stores.get(name)
        if store is None or not bool(store["filled"][keys].all()):
            return None
        return NetOutput(store["logits"][keys], {p: t[keys] for p, t in store["features"].items()})

    @torch.inference_mode()
    def put(self, name: str, keys: torch.Tensor, out: NetOutput) -> None:
        store = self.stores[name]
        if store is None:
            def alloc(t):
                return torch.zeros((self.n, *t.shape[1:]), dtype=t.dtype, device=t.device)

            store = self.stores[name] = {
                "logits": alloc(out.logits), "features": {p: alloc(t) for p, t in out.features.items()},
                "filled": torch.zeros(self.n, dtype=torch.bool, device=out.logits.device)}
        self.changed = True  # no count here: a device sync on every step the teacher runs
        store["logits"][keys] = out.logits
        for p, t in out.features.items():
            store["features"][p][keys] = t
        store["filled"][keys] = True

    def filled(self) -> int:
        """How many samples every frozen network has an output for."""
        return min((int(s["filled"].sum()) if s is not None else 0) for s in self.stores.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a file keeps: each network's filled flags, logits and maps, on the CPU."""
        out = {}
        for name, store in self.stores.items():
            if store is None:
                continue
            out[f"{name}/filled"], out[f"{name}/logits"] = store["filled"].cpu(), store["logits"].cpu()
            out.update({f"{name}/features/{p}": t.cpu() for p, t in store["features"].items()})
        return out

    def load(self, tensors: dict[str, torch.Tensor], device: torch.device) -> int:
        """Take a file's outputs (those of networks and sizes that fit), unverified; how many
        samples it filled."""
        for name in self.stores:
            filled = tensors.get(f"{name}/filled")
            if filled is None or filled.shape != (self.n,):
                continue
            prefix = f"{name}/features/"
            self.stores[name] = {"filled": filled.to(device), "logits": tensors[f"{name}/logits"].to(device),
                                 "features": {k[len(prefix):]: t.to(device) for k, t in tensors.items()
                                              if k.startswith(prefix)}}
            self.unverified.add(name)
        self.changed = False
        return self.filled()

    def drop(self, name: str) -> None:
        self.stores[name] = None
        self.unverified.discard(name)


def agrees(x: torch.Tensor, y: torch.Tensor | None) -> bool:
    """Whether a frozen network's output computed again agrees with a kept one, up to what
    another batch's arithmetic (or half precision) changes: 2% of the tensor's largest magnitude."""
    if y is None or x.shape != y.shape:
        return False
    scale = float(x.abs().max()) if x.numel() else 0.0
    return torch.allclose(x.float(), y.float(), rtol=0.02, atol=0.02 * scale + 1e-6)


def same_outputs(a: NetOutput, b: NetOutput) -> bool:
    """Whether two outputs of the same inputs agree (:func:`agrees`), logits and every map."""
    return agrees(a.logits, b.logits) and all(agrees(t, b.features.get(p)) for p, t in a.features.items())


class Cohort(nn.Module):
    """``taps``: per network, the configured module path of each kind of knowledge
    (``{"s1": {"map": "layer4.1.conv2", "embedding": None}}``); unset kinds take ``pinned``'s path
    (what a run folder recorded when it started, :func:`pinned_taps`), else the kind's default."""

    def __init__(self, networks: dict[str, nn.Module], edges: list[Edge], task: Task, sample: torch.Tensor,
                 ce_weight: float = 0.1, frozen: set[str] = frozenset(),
                 taps: dict[str, dict[str, str | None]] | None = None, class_weights: torch.Tensor | None = None,
                 pinned: list[list[str | None]] | None = None, frozen_precision: str = "fp32"):
        super().__init__()
        self.task = task
        # frozen networks (an offline teacher) may run in half precision, their outputs back in float32
        self.frozen_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(frozen_precision)
        for e in edges:  # styles that change the learner (simkd: the teacher's head) do it first
            if STYLES[e.style].reshapes_learner:
                STYLES[e.style].prepare(networks[e.src], networks[e.dst], e.options, sample, f"edge {e}")
        self.networks = nn.ModuleDict(networks)
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.edges = edges
        self.ce_weight = ce_weight
        self.frozen = set(frozen)
        for name in self.frozen:
            self.networks[name].requires_grad_(False).eval()
        # Self edges teach a network from a frozen shadow copy of itself (made before any hook).
        self.shadows = nn.ModuleDict()
        for i, e in enumerate(edges):
            if STYLES[e.style].self_edge:
                self.shadows[self.module_key(i)] = copy.deepcopy(networks[e.dst]).requires_grad_(False).eval()
        self.adapters = nn.ModuleDict()
        self.warnings: list[str] = []  # shown by `kdstyles check` and when training starts
        if task.num_classes == 2:
            for e in edges:
                if getattr(e.options, "standardize", False):
                    self.warnings.append(
                        f"edge {e}: standardize with two classes maps every sample's logits to the same two values "
                        "(+-0.71 before the temperature), so the soft target keeps only which class wins, at one fixed "
                        "confidence; set standardize: false for two-class outputs")
        self.map_shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # per tapping edge: (src, dst)
        self._probing = False
        self.cache: OutputCache | None = None
        self.cache_mismatch: str | None = None  # a network whose stored outputs did not match its forward
        self.epoch = 1  # the epoch being trained (1-based; the engine sets it), for styles' warm-ups
        try:  # the first forwards: a network that cannot take the input's size is named in one line
            self.edge_taps = self._plan_taps(taps or {}, sample, pinned or [])
            wanted: dict[str, list[str]] = {n: [] for n in networks}
            for e, pair in zip(edges, self.edge_taps):
                for net, path in zip((e.src, e.dst), pair):
                    if path is not None:
                        wanted[net].append(path)
            self.taps = {n: Tap(networks[n], wanted[n], f"networks.{n}.tap") for n in networks}
            self._build_adapters(self.probe(sample))
        except RuntimeError:
            _name_misfit(networks, sample)
            raise

    def _plan_taps(self, taps: dict[str, dict[str, str | None]], sample: torch.Tensor,
                   pinned: list[list[str | None]]) -> list[tuple[str | None, str | None]]:
        """Per edge, the (source, target) module paths its style's kind of knowledge records."""
        planned, found = [], {}  # a default path may take a probe forward: once per network and kind
        for i, e in enumerate(self.edges):
            kind = KNOWLEDGE[STYLES[e.style].consumes]
            pin = pinned[i] if i < len(pinned) and pinned[i][:3] == [e.src, e.dst, e.style] else [None] * 5
            pair = []
            for role, net, recorded in (("src", e.src, pin[3]), ("dst", e.dst, pin[4])):
                override = getattr(e.options, f"{role}_tap", None)  # an edge's own src_tap / dst_tap
                if override:  # named by the edge, not by networks.<name>.tap
                    resolve_module(self.networks[net], override.removesuffix(":in"), f"edge {e}: {role}_tap")
                key = (net, kind.name, override or taps.get(net, {}).get(kind.name) or recorded)
                if key not in found:
                    found[key] = kind.path(self.networks[net], key[2], self.task, sample)
                pair.append(found[key])
            planned.append((pair[0], pair[1]))
        return planned

    # ------------------------------------------------------------------ structure

    @property
    def names(self) -> list[str]:
        return list(self.networks)

    @property
    def trainable(self) -> list[str]:
        return [n for n in self.networks if n not in self.frozen]

    @property
    def students(self) -> list[str]:
        return [n for n in self.networks if n != T]

    def module_key(self, index: int) -> str:
        """Key of an edge's adapter or shadow module (``src__dst__style__index``)."""
        e = self.edges[index]
        return f"{e.src}__{e.dst}__{e.style}__{index}"

    def parameters_of(self, name: str) -> list[nn.Parameter]:
        """A network's own parameters plus those of the adapters on its incoming edges."""
        params = list(self.networks[name].parameters())
        for i, e in enumerate(self.edges):
            key = self.module_key(i)
            if e.dst == name and key in self.adapters:
                params += list(self.adapters[key].parameters())
        return params

    def train(self, mode: bool = True) -> "Cohort":
        super().train(mode)
        for name in self.frozen:
            self.networks[name].eval()
        self.shadows.eval()
        return self

    def _update_shadows(self, event: str) -> None:
        for i, e in enumerate(self.edges):
            key = self.module_key(i)
            if key in self.shadows:
                STYLES[e.style].update_shadow(self.shadows[key], self.networks[e.dst], e.options, event)

    def after_step(self) -> None:
        """Called by the engine after every optimizer step (e.g. EMA shadows)."""
        self._update_shadows("step")

    def after_epoch(self) -> None:
        """Called by the engine at the end of every training epoch."""
        self._update_shadows("epoch")

    def probe(self, sample: torch.Tensor) -> dict[str, NetOutput]:
        """One dummy forward of every network (frozen ones too, outside inference mode, so taps
        are checked): each output's shape is checked by the task."""
        was_training = self.training
        self.eval()
        self._probing = True
        try:
            with torch.no_grad():
                outs = self.forward(sample)
        finally:
            self._probing = False
        self.train(was_training)
        for name in self.networks:
            self.task.check_output(f"networks.{name}", outs[name].logits, sample)
        return outs

    def _build_adapters(self, outs: dict[str, NetOutput]) -> None:
        """An adapter on the receiving side of every edge whose recorded tensors differ in shape
        (as the edge's style asks: project channels and resize, or resize only)."""
        for i, (e, (src_path, dst_path)) in enumerate(zip(self.edges, self.edge_taps)):
            style = STYLES[e.style]
            if style.adapter is None or src_path is None:
                continue
            kind = KNOWLEDGE[style.consumes]
            src_shape = kind.take(outs[e.src], src_path).shape
            dst_shape = kind.take(outs[e.dst], dst_path).shape
            self.map_shapes[i] = (tuple(src_shape[1:]), tuple(dst_shape[1:]))
            for net, path, shape in ((e.src, src_path, src_shape), (e.dst, dst_path, dst_shape)):
                if kind.name == "map" and len(shape) >= 4 and min(shape[2:]) < MIN_MAP:  # a tap the user can move
                    self.warnings.append(
                        f"edge {e}: {net}'s tap {path} gives {'x'.join(map(str, shape[2:]))} maps at this image size, "
                        f"nearly vectors; tap an earlier layer (networks.{net}.tap) or use larger inputs "
                        f"(data.image_size; data.patch_size when training on patches)")
            adapter = make_adapter(dst_shape, src_shape, f"edge {e}", project=style.adapter == "project")
            if adapter is not None:
                self.adapters[self.module_key(i)] = adapter

    # ------------------------------------------------------------------ computation

    def enable_cache(self, n: int) -> None:
        """Keep frozen networks' outputs for the ``n`` training samples (see OutputCache)."""
        self.cache = OutputCache(self.frozen, n)

    def forward(self, x: torch.Tensor, record: bool = True, keys: torch.Tensor | None = None,
                skip: frozenset[str] = frozenset()) -> dict[str, NetOutput]:
        """Run every network once (but those in ``skip``); ``record`` keeps the tapped tensors
        and runs shadows (training); ``keys`` (sample indices) serve cached frozen networks."""
        outs = {}
        for name, net in self.networks.items():
            if name in skip:
                continue
            cached = self.cache is not None and name in self.frozen and keys is not None
            hit = self.cache.get(name, keys) if cached else None
            if hit is not None and name not in self.cache.unverified:
                outs[name] = hit
                continue
            recording = self.taps[name].recording() if record else nullcontext({})
            frozen = name in self.frozen and not self._probing
            half = frozen and self.frozen_dtype is not None
            with torch.inference_mode() if frozen else nullcontext(), recording as feats, \
                    torch.autocast(x.device.type, self.frozen_dtype) if half else nullcontext():
                logits = net(x)
            outs[name] = NetOutput(logits.float(), {p: t.float() for p, t in feats.items()}) if half else \
                NetOutput(logits, dict(feats))
            if hit is not None:  # the first batch served from a file: does it match this forward?
                self.cache.unverified.discard(name)
                if same_outputs(outs[name], hit):
                    outs[name] = hit  # what every later batch gets, so a run reading the file learns the same
                    continue
                self.cache.drop(name)
                self.cache_mismatch = name
            if cached:
                self.cache.put(name, keys, outs[name])
        if record:
            with torch.no_grad():
                for key, shadow in self.shadows.items():
                    outs[key] = NetOutput(shadow(x))
        return outs

    def losses(self, outs: dict[str, NetOutput], y: torch.Tensor, labelled: int | None = None,
               mix: Any = None) -> dict[str, NetLoss]:
        """Every trainable network's loss. ``labelled``: the batch's first ``labelled`` rows have
        the labels ``y`` and the rest none (``data.unlabeled``): the supervised term and the
        styles that consume labels see the labelled rows, every other edge sees all. ``mix``: the
        step's :class:`~kdstyles.data.mix.MixDraw`, whose labels the task mixes."""
        result = {}
        n = len(y) if labelled is None else labelled
        rows = slice(0, n)
        # once per step: what the labels become on a mixed batch, and the labels of each image's larger
        # share, which styles that consume labels (DKD's target class) see
        targets = self.task.mix_targets(y, mix) if mix is not None else (y, y, 1.0)
        style_labels = targets[0] if targets[2] >= 0.5 else targets[1]
        for name in self.trainable:
            sup = self.task.loss_name
            logits = outs[name].logits
            terms = {sup: self.task.supervised_mixed(logits[rows] if len(logits) > n else logits, targets,
                                                     self.class_weights)}
            distill = []
            for i, e in enumerate(self.edges):
                if e.dst != name:
                    continue
                key = self.module_key(i)
                src = key if key in self.shadows else e.src
                kind = KNOWLEDGE[STYLES[e.style].consumes]
                src_path, dst_path = self.edge_taps[i]
                source, target = as_target(kind.take(outs[src], src_path)), kind.take(outs[name], dst_path)
                if key in self.adapters:
                    target, source = self.adapters[key](target, source)
                style = STYLES[e.style]
                if style.labels and len(target) > n:  # the labelled rows only
                    source, target = source[rows], target[rows]
                context = Context(style_labels if style.labels else None, self.epoch, self.task.output_kind,
                                  self.task.num_classes)
                term = style.compute(source, target, e.options, self.task, context)
                label = e.term if e.term not in terms else f"{e.term}#{i}"
                terms[label] = term
                distill.append(e.weight * term)
            if distill:
                total = self.ce_weight * terms[sup] + (1 - self.ce_weight) * torch.stack(distill).sum()
            else:
                total = terms[sup]
            result[name] = NetLoss(total, terms)
        return result


class TrainStep(nn.Module):
    """forward + losses as one module call, so DistributedDataParallel can wrap the cohort once."""

    def __init__(self, cohort: Cohort):
        super().__init__()
        self.cohort = cohort

    def forward(self, batch: Any) -> dict[str, NetLoss]:
        """A :class:`~kdstyles.data.dataset.Batch`'s losses: every network's forward (kept outputs
        of frozen networks served by the rows' keys), then every loss."""
        return self.cohort.losses(self.cohort(batch.images, keys=batch.keys), batch.targets, batch.labelled,
                                  batch.mix)

    def outside_ddp(self) -> list[str]:
        """Parameter and buffer names DDP must leave alone: frozen networks and shadows."""
        names = []
        for prefix, module in [(f"cohort.networks.{n}", self.cohort.networks[n]) for n in self.cohort.frozen] + \
                [("cohort.shadows", self.cohort.shadows)]:
            names += [f"{prefix}.{k}" for k, _ in module.named_parameters()]
            names += [f"{prefix}.{k}" for k, _ in module.named_buffers()]
        return names


def _name_misfit(networks: dict[str, nn.Module], sample: torch.Tensor) -> None:
    """After a failed forward: the first network that cannot take ``sample``'s size, as a
    one-line KDError (e.g. a U-Net whose input side does not halve three times)."""
    size = "x".join(map(str, sample.shape[2:]))
    with torch.no_grad():
        for name, net in networks.items():
            was_training = net.training
            try:
                net.eval()(sample)
            except RuntimeError as exc:
                cause = str(exc).strip().splitlines()[0][:120]
                raise KDError(f"networks.{name}: a {size} input does not pass through it ({cause}); "
                              "encoder-decoders need sides divisible by 2 per downsampling (unet: 8) - change "
                              "data.image_size (data.patch_size)") from None
            finally:
                net.train(was_training)


class Renormalise:
    """A forward pre-hook giving a network inputs normalised as its own run normalised them:
    ``x`` arrives normalised with this run's mean and std, and leaves with the network's own
    (an offline teacher trained on other data, whose run.json records other statistics)."""

    def __init__(self, run: Any, own: Any):
        shape = (1, -1) + (1,) * run.spatial_dims
        self.scale = (torch.tensor(run.std) / torch.tensor(own.std)).view(shape)
        self.shift = ((torch.tensor(run.mean) - torch.tensor(own.mean)) / torch.tensor(own.std)).view(shape)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * self.scale.to(x.device, x.dtype) + self.shift.to(x.device, x.dtype), *args[1:])


def _teacher_inputs(path_str: str) -> Any:
    """The input record (channels, size, normalisation) of the run an offline teacher comes from,
    where its checkpoint is a run folder with a readable run.json; else None."""
    from ..common.inputs import Inputs
    from ..common.dims import of_axes
    from ..models.published import is_published, read_published

    if is_published(path_str) and not RunFolder(path_str).info_path.is_file():  # its record has the input
        record = read_published(path_str, "networks.teacher.checkpoint").record
        try:
            inp, norm = record["input"], record["normalisation"]
            return Inputs(int(inp["channels"]), int(inp["height"]), of_axes(inp).n, tuple(norm["mean"]),
                          tuple(norm["std"]))
        except (KeyError, TypeError, ValueError):
            return None
    run = RunFolder(path_str)
    if not Path(path_str).is_dir() or not run.info_path.is_file():
        return None
    try:
        return Inputs.from_record(run.info(), run.info_path)
    except KDError:
        return None


def _offline_teacher_weights(path_str: str, spec: Any = None) -> tuple[dict[str, torch.Tensor], Path]:
    """The teacher's weights from a run folder (its best teacher checkpoint), a file or a network
    kdstyles published (checked against the config's teacher), and the file."""
    from ..models.published import check_fits, is_published, read_published

    if is_published(path_str) and not RunFolder(path_str).info_path.is_file():
        where = "networks.teacher.checkpoint"
        published = read_published(path_str, where)
        if spec is not None:
            check_fits(published, spec.arch, spec.widen, spec.stem, "networks.teacher")
        return published.weights(where), published.weights_path
    path = Path(path_str)
    if not path.exists():
        raise KDError(f"networks.teacher.checkpoint: '{path}' does not exist (give the teacher's run folder, a .pt "
                      "file of its weights, or a network kdstyles published: a bundle or Hub repository folder, "
                      "hf:ORG/NAME)")
    if path.is_dir():
        run = RunFolder(path)
        found = run.teacher_weights()
        if found is None:
            raise KDError(f"networks.teacher.checkpoint: run folder '{path}' has no "
                          f"{run.best(T).relative_to(path)}")
        path = found
    return checkpoints.state_dict_of(checkpoints.load(path), path, "teacher"), path


def frozen_cost(cohort: Cohort, name: str, batch: torch.Tensor) -> tuple[float, int]:
    """What a frozen network costs a run (``kdstyles check``): seconds for one forward of
    ``batch`` here (the faster of two, at its precision), and the bytes its outputs take per
    image where they are kept (``networks.teacher.cache``: logits and tapped maps, float32)."""
    import time

    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        outs = cohort(batch, record=True, skip=frozenset(n for n in cohort.networks if n != name))
        seconds.append(time.perf_counter() - start)
    out = outs[name]
    per_item = out.logits[0].numel() + sum(t[0].numel() for t in out.features.values())
    return min(seconds), 4 * per_item


def pinned_taps(cohort: Cohort) -> list[list[str | None]]:
    """Per edge ``[src, dst, style, source path, target path]``: what a run folder records when
    it starts (run.json's ``taps``), so that resuming, evaluating or exporting it later taps the
    same modules even where a newer kdstyles picks another default."""
    return [[e.src, e.dst, e.style, *pair] for e, pair in zip(cohort.edges, cohort.edge_taps)]


def build_cohort(cfg: ExperimentConfig, num_classes: int, channels: int, image_size: int,
                 modules: dict[str, nn.Module] | None = None, load_offline: bool = True,
                 class_counts: list[int] | None = None, train_images: int | None = None,
                 pinned: list[list[str | None]] | None = None, inputs: Any = None, reopened: bool = False) -> Cohort:
    """Build every network the routing uses, check taps and shapes, create adapters.
    ``class_counts`` (training split; with ``train_images`` its size) weights the supervised
    loss as the task does (``Task.class_weights``: inverse class frequency for CE); ``pinned``:
    the taps a run folder recorded (:func:`pinned_taps`). ``inputs``: this run's input record;
    an offline teacher from a run folder that normalised its images otherwise gets them
    renormalised as its own run did (:class:`Renormalise`). ``reopened``: a trained run folder's
    networks, whose weights its checkpoints give: a published network they started from is not
    read again (it may have moved)."""
    from ..models.published import names_published

    modules = dict(modules or {})
    edges = cfg.edges
    names = used_networks(list(cfg.networks.students), edges, cfg.routing.teacher_only)
    unknown = sorted(set(modules) - {T, *cfg.networks.students})
    if unknown:
        raise KDError(f"networks passed in: '{unknown[0]}' is not a network of this experiment; "
                      f"allowed: teacher, {', '.join(cfg.networks.students)}")
    odd = next((n for n, m in modules.items() if not isinstance(m, nn.Module)), None)
    if odd is not None:
        raise KDError(f"networks passed in: '{odd}' is a {type(modules[odd]).__name__}, not a torch.nn.Module")
    specs: dict[str, NetworkConfig] = {T: cfg.networks.teacher, **cfg.networks.students}
    task = TASKS[cfg.task].from_config(num_classes, cfg)
    nets, taps = {}, {}
    for name in names:
        spec = specs[name]
        if name in modules:
            nets[name] = modules[name]
        elif spec.arch == "custom":
            raise KDError(f"networks.{name}.arch is 'custom': pass the module through the API, "
                          f"e.g. Experiment(config, networks={{'{name}': model}})")
        else:
            torch.manual_seed(network_seed(cfg.train.seed, name))
            if reopened and names_published(spec.pretrained):  # its weights come from the run's checkpoints
                spec = spec.model_copy(update={"pretrained": False})  # (the same network: built, then loaded)
            nets[name] = task.build_network(spec, channels, image_size, where=f"networks.{name}", dims=cfg.data.dims)
        taps[name] = {"map": spec.tap, "embedding": spec.embedding_tap}
    if cfg.train.qat:  # students learn with int8-rounded weights and outputs (models.fakequant)
        from ..models.fakequant import enable

        for name in cfg.networks.students:
            if name in nets:
                enable(nets[name])
    for net in nets.values():  # a network with an input contract of its own (a Hugging Face teacher)
        if inputs is not None and hasattr(net, "set_inputs"):
            net.set_inputs(inputs)
    frozen = set()
    if T in nets and cfg.networks.teacher.mode == "offline":
        frozen.add(T)
        if load_offline and cfg.networks.teacher.checkpoint:  # none: a Hugging Face teacher whose head the probe fits
            weights, path = _offline_teacher_weights(cfg.networks.teacher.checkpoint, cfg.networks.teacher)
            checkpoints.load_into(nets[T], weights, path, f"networks.teacher (arch {cfg.networks.teacher.arch})")
        own = _teacher_inputs(cfg.networks.teacher.checkpoint) if cfg.networks.teacher.checkpoint else None
        if inputs is not None and own is not None and own.channels == inputs.channels and (
                own.mean != inputs.mean or own.std != inputs.std):
            nets[T].register_forward_pre_hook(Renormalise(inputs, own))
    weights = task.class_weights(class_counts, train_images) if class_counts is not None else None
    sample = dims(cfg.data.dims).sample(2, channels, image_size)
    return Cohort(nets, edges, task, sample, cfg.loss.ce_weight, frozen, taps, weights, pinned,
                  frozen_precision=cfg.networks.teacher.precision)
