"""Vision transformers from the Hugging Face Hub as frozen teachers (models/hf.py) and the probe
that fits their head (engine/probe.py), on tiny random DINOv2 and ViT models written by
save_pretrained in the test (nothing is downloaded)."""

import json

import pytest
import torch

from conftest import tiny
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


def to_timm(model):
    """A transformers DINOv2 model's weights in timm's ViT names (what UNI ships): the inverse of
    the mapping under test, written from timm's layout (qkv fused in query, key, value order)."""
    sd = model.state_dict()
    out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    for i in range(model.config.num_hidden_layers):
        o, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{b}attn.qkv.{part}"] = torch.cat([sd[f"{o}attention.{n}_proj.{part}"] for n in "qkv"])
            for src, dst in (("norm1", "norm1"), ("norm2", "norm2"), ("attention.o_proj", "attn.proj"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[f"{b}{dst}.{part}"] = sd[f"{o}{src}.{part}"]
        out[f"{b}ls1.gamma"], out[f"{b}ls2.gamma"] = sd[f"{o}layer_scale1.lambda1"], sd[f"{o}layer_scale2.lambda1"]
    return out


def test_a_checkpoint_in_timms_layout_loads_without_timm(tmp_path):
    """A folder as UNI's is published (timm's config.json with architecture and pretrained_cfg,
    pytorch_model.bin with timm's key names, layer scale) loads as the same network: the same
    embedding as the model it was written from, its mean and std its own; an unsupported layout
    (registers) is one line."""
    from kdstyles.models.hf import build_hf

    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                    patch_size=8, layerscale_value=0.5)
    source = transformers.Dinov2Model(cfg).eval()
    folder = tmp_path / "uni"
    folder.mkdir()
    torch.save({**to_timm(source), "head.weight": torch.zeros(0)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch8_32", "num_classes": 0, "model_args": {"num_heads": 2, "init_values": 0.5},
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": [3, 32, 32]}}))
    net = build_hf(f"hf:{folder}", 3, "networks.teacher").eval()
    assert net.contract["mean"] == (0.5, 0.5, 0.5) and net.contract["size"] == 32
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = source(pixel_values=x).pooler_output
        got = net.backbone(pixel_values=x).pooler_output
    assert torch.allclose(got, want, atol=1e-5)
    torch.save({**to_timm(source), "reg_token": torch.zeros(1, 4, 32)}, folder / "pytorch_model.bin")
    with pytest.raises(KDError, match="this timm ViT has reg_token, which kdstyles does not map yet"):
        build_hf(f"hf:{folder}", 3, "networks.teacher")


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
