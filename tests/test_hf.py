"""Vision transformers from the Hugging Face Hub as frozen teachers (models/hf.py) and the probe
that fits their head (engine/probe.py), on tiny random DINOv2 and ViT models written by
save_pretrained in the test (nothing is downloaded)."""

import json

import pytest
import torch

from conftest import DATA, SEG, tiny
from kdstyles import Experiment, KDError, load_config

transformers = pytest.importorskip("transformers")


def save_dinov2(folder, registers=0, size=32):
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, image_size=size, patch_size=8,
                                                     num_register_tokens=registers)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_size=size, patch_size=8)
        model = transformers.Dinov2Model(cfg)
    model.save_pretrained(folder)
    return folder


def save_vit(folder, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    cfg = transformers.ViTConfig(hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                                 image_size=24, patch_size=6)
    transformers.ViTModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(mean), "image_std": list(std)}))
    return folder


def teacher(folder, *extra):
    return [f"networks.teacher.arch=hf:{folder}", "networks.teacher.mode=offline", *extra]


def test_a_hub_model_keeps_its_input_contract_and_gives_maps_on_its_patch_grid(tmp_path):
    """It sees the run's images back in [0, 1], grey repeated to RGB, resized to its size and
    normalised with its own statistics (the preprocessor file's); each block's patch tokens come
    out as a map on the patch grid, register and class tokens dropped."""
    import torch.nn.functional as F

    from kdstyles.common.inputs import Inputs
    from kdstyles.models.hf import build_hf
    from kdstyles.models.taps import Tap

    vit = build_hf(f"hf:{save_vit(tmp_path / 'vit')}", 3, "networks.teacher")
    assert vit.contract["size"] == 24 and vit.contract["mean"] == (0.5, 0.5, 0.5) and vit.default_map_tap == "blocks.2"
    vit.set_inputs(Inputs(1, 16, 2, (0.3,), (0.2,)))
    x = torch.rand(2, 1, 16, 16)
    want = F.interpolate((x * 0.2 + 0.3).expand(-1, 3, -1, -1), size=(24, 24), mode="bilinear",
                         align_corners=False, antialias=True)
    assert torch.allclose(vit.prepare(x), (want - 0.5) / 0.5, atol=1e-6)
    dino = build_hf(f"hf:{save_dinov2(tmp_path / 'dino', registers=2)}", 4, "networks.teacher")
    assert dino.contract["registers"] == 2 and dino.contract["mean"] == (0.485, 0.456, 0.406)  # no file: ImageNet's
    tap = Tap(dino, ["blocks.0", "blocks.1", "embedding"], "test")
    with tap.recording() as found:
        logits = dino(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 4) and found["embedding"].shape == (3, 32)
    assert found["blocks.0"].shape == found["blocks.1"].shape == (3, 32, 4, 4)  # 32 px / 8 px patches; 1 + 2 dropped
    assert not any(p.requires_grad for p in dino.backbone.parameters())


def test_a_frozen_hub_teacher_is_probed_then_teaches_students(tmp_path, cli):
    """Offline with no checkpoint: the probe fits its head on the training images' embeddings
    (the weight decay chosen on validation, probe.json) before anything else is written; the
    students then learn from its predictions and its last block's map; the run evaluates again
    from its folder, the teacher's head included."""
    folder = save_dinov2(tmp_path / "dino")
    exp = Experiment(None, overrides=tiny(tmp_path, *teacher(folder), "routing.preset=diverse"), quiet=True)
    exp.fit()
    probe = json.loads((exp.run_dir / "probe.json").read_text())
    assert probe["embedding"] == 32 and probe["images"] == {"train": 48, "val": 24} and probe["metric"] == "accuracy"
    assert str(probe["chosen"]) in probe["decays"] and probe["val"]["accuracy"] == max(probe["decays"].values())
    info = json.loads((exp.run_dir / "run.json").read_text())
    assert ["teacher", "s2", "features", "blocks.1", info["taps"][1][4]] == info["taps"][1]
    first = exp.evaluate()
    # its class token to a student's pooled features through a projector, and by CKA without one
    edges = ("routing.edges=[{src: teacher, dst: s1, style: embedding, weight: 0.5}, "
             "{src: teacher, dst: s2, style: cka, weight: 0.5}]")
    embedded = Experiment(None, overrides=tiny(tmp_path / "emb", *teacher(folder), "routing.preset=null", edges,
                                              "train.epochs=1"), quiet=True)
    embedded.fit()
    adapters = dict(embedded.cohort.adapters.items())
    assert len(adapters) == 1 and isinstance(next(iter(adapters.values())).project[0], torch.nn.Linear)
    import csv

    logged = list(csv.DictReader((embedded.run_dir / "metrics.csv").open()))
    assert any(r.get("train_embedding<-teacher") for r in logged) and any(r.get("train_cka<-teacher") for r in logged)
    code, out, err = cli("evaluate", exp.run_dir)
    assert code == 0, err
    again = json.loads((exp.run_dir / "eval.json").read_text())
    assert again["networks"]["teacher"] == first["networks"]["teacher"]  # the probed head, read back


def test_the_probes_embeddings_are_stored_for_the_next_run_and_checked(tmp_path, own_store):
    """The probe's embeddings go to the store (kdstyles.store.outputs): the next run of the same
    teacher, data and seed reads them (its first batch embedded again to check them) and fits
    the same head; a file that does not agree with the teacher is embedded again."""
    from kdstyles.store import checkpoints

    folder = save_dinov2(tmp_path / "dino")

    def probe(name):
        exp = Experiment(None, overrides=tiny(tmp_path, *teacher(folder), "routing.preset=kd", "train.epochs=1",
                                              f"output.name={name}"), quiet=True)
        exp.fit()
        return json.loads((exp.run_dir / "probe.json").read_text())

    first, second = probe("first"), probe("second")
    assert first["embeddings"] == "computed" and second["embeddings"] == "read from the store"
    assert second["val"] == first["val"] and second["chosen"] == first["chosen"]
    stored = [p for p in own_store.glob("*.pt") if set(checkpoints.load(p)["outputs"]) == {"train", "val"}]
    assert len(stored) == 1
    for path in stored:  # another model's embeddings under this key
        kept = checkpoints.load(path)["outputs"]
        checkpoints.save({"outputs": {k: v + 1 for k, v in kept.items()}}, path)
    assert probe("third")["embeddings"] == "computed"


def test_checkpoints_keep_a_frozen_backbones_fingerprint_not_its_weights(tmp_path):
    """The teacher's checkpoint and every epoch's last.pt keep its head and the SHA-256 of its
    backbone, not the backbone (the model's own files give it again); a later run taking that
    run folder as its teacher loads the head onto the same backbone, and onto other weights of
    the model it refuses in one line."""
    from kdstyles.store import checkpoints

    folder = save_dinov2(tmp_path / "dino")
    exp = Experiment(None, overrides=tiny(tmp_path, *teacher(folder), "routing.preset=kd", "train.epochs=1"),
                     quiet=True)
    exp.fit()
    best = checkpoints.load(exp.folder.best("teacher"))["state_dict"]
    assert set(best) == {"head.weight", "head.bias", "backbone_fingerprint"}
    last = checkpoints.load(exp.folder.last)["cohort"]
    assert not any(".backbone." in k for k in last) and "networks.teacher.backbone_fingerprint" in last
    reused = Experiment(None, overrides=tiny(tmp_path / "again", *teacher(folder), "routing.preset=kd",
                                             f"networks.teacher.checkpoint={exp.run_dir}"), quiet=True)
    assert torch.equal(reused.cohort.networks["teacher"].head.weight, exp.cohort.networks["teacher"].head.weight)
    other = save_dinov2(tmp_path / "other")  # the same shapes, other random weights
    with pytest.raises(KDError, match="holds a head fitted on other weights of other than those loaded now"):
        Experiment(None, overrides=tiny(tmp_path / "o", *teacher(other), "routing.preset=kd",
                                        f"networks.teacher.checkpoint={exp.run_dir}"), quiet=True).cohort


def test_a_hub_teacher_segments_through_a_per_patch_head_and_teaches_students(tmp_path):
    """Segmentation: the probe fits a head on every patch token against each patch's class
    shares, chosen by the validation Dice of its upsampled predictions; the teacher then
    predicts per-pixel logits at the input's size, and students learn from them and from its
    last block's map; evaluated on validation, the teacher scores exactly what the probe chose
    (the head installed, its dense outputs upsampled as the probe scored them)."""
    folder = save_dinov2(tmp_path / "dino")
    seg = [o for o in SEG if not o.startswith("networks.teacher.")]
    over = tiny(tmp_path, *seg, *DATA, *teacher(folder), "routing.preset=diverse", "train.epochs=1")
    exp = Experiment(None, overrides=over, quiet=True)
    exp.fit()
    probe = json.loads((exp.run_dir / "probe.json").read_text())
    assert probe["metric"] == "dice" and probe["rows"] == 32 * 4 * 4  # 32 images' 4 x 4 patch tokens
    assert probe["val"]["dice"] == max(probe["decays"].values())
    teacher_net = exp.cohort.networks["teacher"]
    with torch.no_grad():
        assert teacher_net(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    info = json.loads((exp.run_dir / "run.json").read_text())
    assert [e[:4] for e in info["taps"] if e[0] == "teacher"][-1][3] == "blocks.1"
    found = exp.evaluate(split="val")["networks"]
    assert {"s1", "s2"} <= set(found)
    for metric in ("dice", "pixel_accuracy", "nll"):
        assert found["teacher"][metric] == pytest.approx(probe["val"][metric], rel=1e-4, abs=1e-5)


def test_the_per_patch_probe_learns_each_patchs_class_shares():
    """Patch tokens that carry their patch's class (plus noise) give back masks: the rows are
    the patches' tokens with their class shares (a mixed patch's share in between), and the
    head's upsampled prediction matches the masks on the patches of one class."""
    from kdstyles.engine.probe import fit_head, head_outputs, patch_rows
    from kdstyles.tasks import TASKS

    task = TASKS["segmentation"](2)
    masks = torch.zeros(6, 8, 8, dtype=torch.long)
    masks[:, :4, :] = 1  # the top half foreground: patches of 4 x 4 pixels on a 2 x 2 grid
    masks[0, 4:6, 0:4] = 1  # image 0: its bottom-left patch half foreground
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 5, 2, 2, generator=g) * 0.1
    maps[:, 0] += F_pool(masks) * 4
    rows, shares = patch_rows(maps, masks, 2, seed=0)
    assert rows.shape == (24, 5) and shares.shape == (24, 2)
    assert torch.allclose(shares[2], torch.tensor([0.5, 0.5]))  # image 0, bottom-left patch
    assert torch.allclose(shares[0], torch.tensor([0.0, 1.0])) and torch.allclose(shares[3], torch.tensor([1.0, 0.0]))
    head = fit_head(task, rows, shares, 0.0, 2, seed=0, soft=True)
    pred = head_outputs(head, maps, (8, 8)).argmax(1)
    assert (pred[1:, 1:3] == 1).all() and (pred[1:, 6:] == 0).all()


def F_pool(masks):
    """Each patch's foreground share on a 2 x 2 grid of an (N, 8, 8) mask."""
    return torch.nn.functional.avg_pool2d(masks[:, None].float(), 4)[:, 0]


def test_hub_teachers_that_cannot_be_had_or_used_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KDError, match=r"networks.teacher.arch: 'nobody/no-such-model' is not a folder here and could "
                                      r"not be had from the Hugging Face Hub .*'hf download nobody/no-such-model "
                                      r"--local-dir DIR' and set networks.teacher.arch: hf:DIR"):
        Experiment(None, overrides=tiny(tmp_path, *teacher("nobody/no-such-model")), quiet=True).cohort
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KDError, match=f"folder '{empty}' holds no model transformers can load"):
        Experiment(None, overrides=tiny(tmp_path, *teacher(empty)), quiet=True).cohort
    with pytest.raises(KDError, match="a Hugging Face teacher is frozen; set networks.teacher.mode: offline"):
        load_config(None, [f"networks.teacher.arch=hf:{empty}"])
    with pytest.raises(KDError, match="s1.arch: hf:x is a teacher; a student is a network of the zoo"):
        load_config(None, ["networks.students.s1.arch=hf:x"])
    with pytest.raises(KDError, match="name a Hugging Face model after hf:"):
        load_config(None, ["networks.teacher.arch=hf:@main", "networks.teacher.mode=offline"])


def test_the_probe_picks_the_decay_that_scores_best_on_validation():
    """Separable embeddings: every decay separates the validation images, and the tie goes to
    the strongest; the head fitted by L-BFGS classifies them all."""
    from kdstyles.engine.probe import DECAYS, fit_head
    from kdstyles.tasks import TASKS

    task = TASKS["classification"](3)
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.eye(3, 8)
    y = torch.arange(60) % 3
    x = centres[y] + 0.3 * torch.randn(60, 8, generator=g)
    head = fit_head(task, x, y, DECAYS[0], 3, seed=0)
    assert (head(x).argmax(1) == y).all()
    strong = fit_head(task, x, y, DECAYS[-1], 3, seed=0)
    assert strong.weight.norm() < head.weight.norm()  # the decay shrinks the weights


def to_timm(model, packed=True, no_embed_class=False, reg_pos=None):
    """A transformers DINOv2 model's weights in timm's ViT names (what UNI and Virchow2 ship): the
    inverse of the mapping under test, written from timm's layout (qkv fused in query, key, value
    order; a SwiGLU's gate then up projection packed in fc1, or split as fc1_g and fc1_x).
    ``no_embed_class``: the position embedding covers the patches only (the class token's must be
    zero in ``model``); ``reg_pos``: registers take these positions, taken off their tokens."""
    sd = model.state_dict()
    pos = sd["embeddings.position_embeddings"]
    out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": pos[:, 1:] if no_embed_class else pos,
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    if "embeddings.register_tokens" in sd:
        out["reg_token"] = sd["embeddings.register_tokens"]
        if reg_pos is not None:
            out["reg_token"] = out["reg_token"] - reg_pos
            out["pos_embed"] = torch.cat([pos[:, :1], reg_pos, pos[:, 1:]], 1)
    for i in range(model.config.num_hidden_layers):
        o, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{b}attn.qkv.{part}"] = torch.cat([sd[f"{o}attention.{n}_proj.{part}"] for n in "qkv"])
            for src, dst in (("norm1", "norm1"), ("norm2", "norm2"), ("attention.o_proj", "attn.proj")):
                out[f"{b}{dst}.{part}"] = sd[f"{o}{src}.{part}"]
            if f"{o}mlp.gate_proj.{part}" in sd:
                gate, up = sd[f"{o}mlp.gate_proj.{part}"], sd[f"{o}mlp.up_proj.{part}"]
                if packed:
                    out[f"{b}mlp.fc1.{part}"] = torch.cat([gate, up])
                else:
                    out[f"{b}mlp.fc1_g.{part}"], out[f"{b}mlp.fc1_x.{part}"] = gate, up
                out[f"{b}mlp.fc2.{part}"] = sd[f"{o}mlp.down_proj.{part}"]
            else:
                out[f"{b}mlp.fc1.{part}"], out[f"{b}mlp.fc2.{part}"] = sd[f"{o}mlp.fc1.{part}"], sd[f"{o}mlp.fc2.{part}"]
        out[f"{b}ls1.gamma"], out[f"{b}ls2.gamma"] = sd[f"{o}layer_scale1.lambda1"], sd[f"{o}layer_scale2.lambda1"]
    return out


def write_timm(folder, state, architecture="vit_tiny_patch8_32"):
    folder.mkdir(exist_ok=True)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architecture": architecture, "num_classes": 0, "model_args": {"num_heads": 2, "init_values": 0.5},
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": [3, 32, 32]}}))
    return folder


def same_embedding(source, folder):
    from kdstyles.models.hf import build_hf

    net = build_hf(f"hf:{folder}", 3, "networks.teacher").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = source(pixel_values=x).last_hidden_state
        got = net.backbone(pixel_values=x).last_hidden_state
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    return net


def test_a_checkpoint_in_timms_layout_loads_without_timm(tmp_path):
    """A folder as UNI's is published (timm's config.json with architecture and pretrained_cfg,
    pytorch_model.bin with timm's key names, layer scale) loads as the same network: the same
    tokens as the model it was written from, its mean and std its own; an unsupported layout
    (a pooled fc_norm) is one line."""
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                    patch_size=8, layerscale_value=0.5)
    source = transformers.Dinov2Model(cfg).eval()
    folder = write_timm(tmp_path / "uni", {**to_timm(source), "head.weight": torch.zeros(0)})
    net = same_embedding(source, folder)
    assert net.contract["mean"] == (0.5, 0.5, 0.5) and net.contract["size"] == 32 and net.contract["registers"] == 0
    write_timm(folder, {**to_timm(source), "fc_norm.weight": torch.ones(32)})
    with pytest.raises(KDError, match="this timm ViT has fc_norm, which kdstyles does not map yet"):
        same_embedding(source, folder)


@pytest.mark.parametrize("packed", [True, False])
def test_virchow2s_layout_registers_and_swiglu_load_as_the_same_network(tmp_path, packed):
    """Virchow2's layout (register tokens whose positions timm adds, a SwiGLU MLP packed in fc1)
    and H-optimus-like variants (split SwiGLU, a position embedding over the patches only) give
    the same tokens as the transformers model they were written from; register tokens are
    dropped from the tapped maps."""
    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 image_size=32, patch_size=8, num_register_tokens=3, mlp_ratio=3,
                                                 use_swiglu_ffn=True, layerscale_value=0.5)
    source = transformers.Dinov2WithRegistersModel(cfg).eval()
    with torch.no_grad():
        source.embeddings.register_tokens.normal_()
        if not packed:
            source.embeddings.position_embeddings[:, :1] = 0  # timm's no_embed_class: the class token has none
            for layer in source.encoder.layer:  # a width transformers' integer mlp_ratio never gives
                layer.mlp.gate_proj, layer.mlp.up_proj = torch.nn.Linear(32, 20), torch.nn.Linear(32, 20)
                layer.mlp.down_proj = torch.nn.Linear(20, 32)
    reg_pos = torch.randn(1, 3, 32) if packed else None
    folder = write_timm(tmp_path / "virchow", to_timm(source, packed, no_embed_class=not packed, reg_pos=reg_pos),
                        "vit_huge_patch14_224")
    net = same_embedding(source, folder)
    assert net.contract["registers"] == 3
    found = {}
    hook = net.blocks[1].register_forward_hook(lambda m, i, o: found.setdefault("map", o))
    with torch.no_grad():
        net.features(torch.rand(2, 3, 32, 32))
    hook.remove()
    assert found["map"].shape == (2, 32, 4, 4)  # 16 patches; the class and 3 register tokens dropped


def test_check_says_what_a_large_teacher_costs_and_bf16_runs_it(tmp_path, cli):
    """kdstyles check times the frozen teacher on a batch and, with its outputs kept per view,
    says the memory they take; precision bf16 runs its forward in half precision, its outputs
    back in float32 and close to fp32's."""
    from kdstyles.engine.cohort import frozen_cost

    folder = save_dinov2(tmp_path / "dino")
    over = tiny(tmp_path, *teacher(folder), "routing.preset=fitnet", "data.views=2", "networks.teacher.cache=true",
                "networks.teacher.precision=bf16", "data.augment.hflip=false", "data.augment.vflip=false")
    code, out, err = cli("check", *(a for o in over for a in ("--set", o)))
    assert code == 0, err
    assert "teacher cost" in out and "(bf16)" in out and "outputs kept for 96 image views take" in out
    half = Experiment(None, overrides=over, quiet=True).cohort
    full = Experiment(None, overrides=[*over[:-3], "networks.teacher.precision=fp32"], quiet=True).cohort
    x = torch.rand(4, 3, 16, 16)
    a, b = half(x, skip=frozenset({"s1", "s2"}))["teacher"], full(x, skip=frozenset({"s1", "s2"}))["teacher"]
    assert a.logits.dtype == torch.float32 and all(t.dtype == torch.float32 for t in a.features.values())
    assert torch.allclose(a.features["blocks.1"], b.features["blocks.1"], atol=0.1, rtol=0.05)
    seconds, per_item = frozen_cost(full, "teacher", x)
    assert seconds > 0 and per_item == 4 * (4 + 32 * 4 * 4)  # 4 classes' logits and the 32 x 4 x 4 map, float32
    with pytest.raises(KDError, match="precision bf16: for a frozen teacher"):
        load_config(None, ["networks.teacher.precision=bf16"])
