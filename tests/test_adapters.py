"""LoRA variants (DoRA, LoKr, LoHa) and EMA of adapter weights, each on the tiny SD1 and SDXL models: the run's file
loads back exactly through the generation engine and changes the images (scale 0 gives the base back), and its
kohya/LyCORIS export uses the module names ComfyUI maps and the tensor layouts A1111/ComfyUI read, with the scale
the adapter trained with. Plus EMA (the output is the average; resume continues it), pivotal tuning with a variant,
the model card's snippet per type and the Train tab's adapter settings.

The runs are trained once per session (generate_helpers.RUN_SETTINGS), 6 steps at 32 px each.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from generate_helpers import (
    FAST,
    one_torch_thread,  # noqa: F401 - autouse fixture (one torch thread)
    pixels,
    trained_run,
)
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from sdtune_ui.export.formats import export_run
from sdtune_ui.export.kohya import kohya_module_name, read_lora_file
from sdtune_ui.export.single_file import unet_key_to_ldm
from sdtune_ui.families import detect_family
from sdtune_ui.generate.artifacts import run_artifacts
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.methods.adapters import adapter_for_file, read_adapter_file
from sdtune_ui.methods.adapters.base import split_components
from sdtune_ui.models import load_pipeline, tiny_model_path
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train
from tests.train_helpers import losses, quick_config, run_training

VARIANTS = ["dora", "lokr", "loha", "lora_ema"]
FAMILIES = ["sd1", "sdxl"]
RUNS = [f"{variant}_{family}" for variant in VARIANTS for family in FAMILIES]
OPTIONS = GenerationOptions(prompt="a photo of sks robot", seed=0, **FAST)


def adapter_type(run_name: str) -> str:
    return "lora" if run_name.startswith("lora_ema") else run_name.split("_")[0]


def loaded_state(pipe, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter tensors a pipeline holds, named as in our files (`unet.…`, `text_encoder.text_model.…`)."""
    from peft.utils import get_peft_model_state_dict

    state = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is None or adapter_name not in getattr(model, "peft_config", {}):
            continue
        for key, value in get_peft_model_state_dict(model, adapter_name=adapter_name).items():
            if component != "unet" and not key.startswith("text_model."):
                key = "text_model." + key
            state[f"{component}.{key}"] = value
    return state


# ---------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("run_name", RUNS)
def test_the_file_loads_exactly_changes_the_images_and_scale_zero_is_the_base(run_name):
    run = trained_run(run_name)
    [artifact] = run_artifacts(run).artifacts
    adapter = adapter_for_file(artifact.path)
    assert adapter.name == adapter_type(run_name) and Path(artifact.path).name == adapter.file_name
    model = f"tiny-{run_name.rsplit('_', 1)[1]}"

    engine = GenerationEngine(device="cpu")
    base = pixels(engine.generate(model, [], OPTIONS))
    tuned = pixels(engine.generate(model, [artifact], OPTIONS))
    assert np.abs(tuned - base).mean() > 2       # the adapter changes the picture (8-bit pixel units)

    # Exact: every tensor of the file is what the pipeline now applies (UNet and text encoders).
    file_state, _ = read_adapter_file(artifact.path)
    held = loaded_state(engine.pipe, next(iter(engine._adapters)))
    assert held.keys() == file_state.keys() and any(k.startswith("text_encoder.") for k in held)
    for key, value in file_state.items():
        assert torch.equal(held[key].reshape(value.shape), value), key

    assert np.array_equal(pixels(engine.generate(model, [replace(artifact, scale=0.0)], OPTIONS)), base)
    assert np.array_equal(pixels(engine.generate(model, [artifact], OPTIONS)), tuned)


# ---------------------------------------------------------------------------------------------- kohya / LyCORIS
def comfyui_names(pipe) -> dict[str, torch.Size]:
    """The module names ComfyUI's LoRA loader maps for this model, with their weight shapes.

    UNet (any family): `lora_unet_` + the diffusers module path, and `lora_unet_` + the original (LDM) path of the
    checkpoint, dots as underscores. CLIP: `lora_te_` (one encoder) or `lora_te1_` / `lora_te2_` (SDXL) +
    `text_model_encoder_layers_{i}_{self_attn_q_proj|k|v|out_proj|mlp_fc1|mlp_fc2}`.
    (The LDM names come from single_file.unet_key_to_ldm, which test_export checks against diffusers' own
    from_single_file.)
    """
    names: dict[str, torch.Size] = {}
    config = dict(pipe.unet.config)
    for path, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            names["lora_unet_" + path.replace(".", "_")] = module.weight.shape
            ldm = unet_key_to_ldm(path + ".weight", config).removesuffix(".weight")
            names["lora_unet_" + ldm.replace(".", "_")] = module.weight.shape
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    prefixes = ["lora_te_"] if len(encoders) == 1 else ["lora_te1_", "lora_te2_"]
    parts = {"self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
             "self_attn_v_proj": "self_attn.v_proj", "self_attn_out_proj": "self_attn.out_proj",
             "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
    for prefix, encoder in zip(prefixes, encoders):
        inner = encoder.text_model if hasattr(encoder, "text_model") else encoder
        for i in range(encoder.config.num_hidden_layers):
            for short, path in parts.items():
                weight = inner.get_submodule(f"encoder.layers.{i}.{path}").weight
                names[f"{prefix}text_model_encoder_layers_{i}_{short}"] = weight.shape
    return names


def check_layout(tensors: dict[str, torch.Tensor], shape: torch.Size) -> None:
    """Tensor names and shapes as A1111's and ComfyUI's LoRA / LoHa / LoKr readers expect for a weight `shape`."""
    out, inputs, kernel = shape[0], shape[1], tuple(shape[2:])
    flat_in = inputs * math.prod(kernel)
    assert tensors["alpha"].ndim == 0
    if "lora_down.weight" in tensors:
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        rank = down.shape[0]
        assert down.shape == (rank, inputs, *kernel) and up.shape == (out, rank, *[1] * len(kernel))
        allowed = {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}
        if "dora_scale" in tensors:   # 2-D/4-D along the output axis (ComfyUI's output-axis branch)
            assert tensors["dora_scale"].shape == (out, *[1] * (len(shape) - 1))
    elif "hada_w1_a" in tensors:
        rank = tensors["hada_w1_b"].shape[0]
        for pair in ("hada_w1", "hada_w2"):
            assert tensors[f"{pair}_a"].shape == (out, rank) and tensors[f"{pair}_b"].shape == (rank, flat_in)
        allowed = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
    else:
        w1 = tensors.get("lokr_w1")
        out_l, in_m = w1.shape if w1 is not None else (tensors["lokr_w1_a"].shape[0], tensors["lokr_w1_b"].shape[1])
        if w1 is None:
            assert tensors["lokr_w1_a"].shape[1] == tensors["lokr_w1_b"].shape[0]
        if "lokr_w2" in tensors:
            assert tensors["lokr_w2"].shape[2:] == kernel
            out_k, in_n = tensors["lokr_w2"].shape[:2]
        else:
            out_k, rank = tensors["lokr_w2_a"].shape
            assert tensors["lokr_w2_b"].shape[0] == rank and tensors["lokr_w2_b"].shape[1] % math.prod(kernel) == 0
            in_n = tensors["lokr_w2_b"].shape[1] // math.prod(kernel)
        assert (out_l * out_k, in_m * in_n) == (out, inputs)
        allowed = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}
    assert set(tensors) <= allowed, set(tensors) - allowed


def loader_weight(w0: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight A1111 / ComfyUI compute from one module's kohya tensors at strength 1 (their published rules:
    scale alpha / rank, where LoKr's rank is that of its low-rank factor and without one the scale is 1; DoRA's
    dora_scale per output row, as LyCORIS 3.1.1+ applies it)."""
    alpha = float(t["alpha"])
    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(w0.shape) * alpha / down.shape[0]
    elif "hada_w1_a" in t:
        delta = ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(w0.shape)
        delta = delta * alpha / t["hada_w1_b"].shape[0]
    else:
        rank = None
        w1 = t.get("lokr_w1")
        if w1 is None:
            w1, rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
        w2 = t.get("lokr_w2")
        if w2 is None:
            w2, rank = t["lokr_w2_a"] @ t["lokr_w2_b"], t["lokr_w2_b"].shape[0]
            w2 = w2.reshape(w2.shape[0], -1, *w0.shape[2:])
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2).reshape(w0.shape) * (alpha / rank if rank else 1.0)
    weight = w0 + delta
    if "dora_scale" in t:
        norm = weight.flatten(1).norm(dim=1).reshape(-1, *[1] * (w0.ndim - 1))
        weight = weight * t["dora_scale"] / norm
    return weight


@pytest.mark.parametrize("run_name", RUNS)
def test_kohya_export_has_the_names_comfyui_maps_and_the_trained_scale(run_name, tmp_path):
    run = trained_run(run_name)
    model = f"tiny-{run_name.rsplit('_', 1)[1]}"
    export_run(run, "kohya", tmp_path, model_card=False)
    state, metadata = read_lora_file(tmp_path / f"{run.name}.safetensors")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, _, suffix = key.partition(".")
        modules.setdefault(name, {})[suffix] = value

    base = load_pipeline(model)
    names = comfyui_names(base)
    for name, tensors in modules.items():
        assert name in names, f"{name}: ComfyUI maps no module of that name"
        check_layout(tensors, names[name])
    unet_names = [n for n in modules if n.startswith("lora_unet_")]
    if run_name.endswith("sdxl"):   # kohya's SDXL naming: the original blocks
        assert all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", n) for n in unet_names)
        assert any(n.startswith("lora_te2_") for n in modules) and any(n.startswith("lora_te1_") for n in modules)
    else:
        assert any(n.startswith("lora_unet_down_blocks_") for n in unet_names)
        assert any(n.startswith("lora_te_text_model_") for n in modules)
    source = run_artifacts(run).artifacts[0].path
    file_state, _ = read_adapter_file(source)
    trained_modules = {key.rsplit(".", 2 if key.endswith(".weight") else 1)[0] for key in file_state}
    assert len(modules) == len(trained_modules)   # every trained layer is in the export
    if adapter_type(run_name) != "lora":
        assert metadata["ss_network_module"] == "lycoris.kohya"

    # The tools' arithmetic on the exported tensors gives the weights the adapter trained (peft's merge).
    tuned = load_pipeline(model)
    adapter_for_file(source).apply(tuned, Path(source), "t")
    tuned.fuse_lora(adapter_names=["t"], lora_scale=1.0)
    family, unet_config = detect_family(base), dict(base.unet.config)
    largest_change = 0.0
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model_part = getattr(tuned, component, None)
        if model_part is None:
            continue
        for path, layer in model_part.named_modules():
            if not hasattr(layer, "base_layer"):
                continue
            portable = path if component == "unet" or path.startswith("text_model.") else "text_model." + path
            name = kohya_module_name(component, portable, family=family, unet_config=unet_config)
            w0 = getattr(base, component).get_submodule(path).weight.detach()
            fused = layer.base_layer.weight.detach()
            torch.testing.assert_close(loader_weight(w0, modules[name]), fused, atol=2e-6, rtol=1e-4)
            largest_change = max(largest_change, float((fused - w0).abs().max()))
    assert largest_change > 1e-3   # the comparison is not vacuous: training moved the weights


# ---------------------------------------------------------------------------------------------- EMA
def test_lora_ema_saves_the_average_of_the_adapter_weights_only(toy_dataset, tmp_path):
    from sdtune_ui.methods.base import named_trainable
    from sdtune_ui.train.trainer import Trainer

    config = quick_config(toy_dataset, use_ema=True, ema_decay=0.5, train_text_encoder=True, lora_targets="all",
                          max_train_steps=3, checkpointing_steps=2, learning_rate=1e-2)
    run = RunDir(tmp_path / "run").create()
    config.save(run.config_path)
    trainer = Trainer(config, run)
    trainer.setup()
    trainer.fit()
    trainable = named_trainable(trainer.parts)
    raw = {name: p.detach().clone() for name, p in trainable.items()}
    # One average per adapter tensor (UNet and text encoder), not a shadow of the whole UNet.
    assert len(trainer.ema.shadow_params) == len(raw) < sum(1 for _ in trainer.parts.unet.parameters())
    shadows = [s.detach().clone() for s in trainer.ema.shadow_params]
    trainer.save_output()
    for param, shadow in zip(trainable.values(), shadows, strict=True):
        assert torch.equal(param, shadow)   # the saved weights are the averages ...
    moved = max(float((raw[name] - p.detach()).abs().max()) for name, p in trainable.items())
    assert moved > 1e-4                     # ... which differ from the last weights
    from peft.utils import get_peft_model_state_dict

    saved = load_file(trainer.run.output_dir / "pytorch_lora_weights.safetensors")
    unet_saved = {k.removeprefix("unet."): v for k, v in saved.items() if k.startswith("unet.")}
    assert all(torch.equal(unet_saved[k], v) for k, v in get_peft_model_state_dict(trainer.parts.unet).items())

    # A checkpoint, materialised for generation, carries its averages too (not its raw weights).
    artifact = run_artifacts(trainer.run.path, step=2).artifacts[0]
    pipe = load_pipeline("tiny-sd1")
    adapter_for_file(artifact.path).apply(pipe, Path(artifact.path), "m")
    held = [p for model in (pipe.unet, pipe.text_encoder) for n, p in model.named_parameters() if ".m." in n]
    averages = torch.load(trainer.run.checkpoints_dir / "step-2" / "ema.pt", weights_only=True)["shadow_params"]
    assert len(held) == len(averages)
    assert all(torch.equal(p, a) for p, a in zip(held, averages, strict=True))
    step2_raw = load_file(trainer.run.checkpoints_dir / "step-2" / "trainable.safetensors")
    assert sorted(v.shape for v in step2_raw.values()) == sorted(a.shape for a in averages)
    assert not all(any(torch.equal(a, r) for r in step2_raw.values()) for a in averages)


def test_resumed_ema_run_equals_an_uninterrupted_one(toy_dataset, tmp_path):
    config = quick_config(toy_dataset, max_train_steps=6, checkpointing_steps=3, use_ema=True, ema_decay=0.5,
                          train_text_encoder=True, learning_rate=1e-2)
    straight = run_training(config, tmp_path / "straight")

    def step_logged(step: int) -> bool:
        return any(e["kind"] == "step" and e["step"] >= step for e in RunDir(tmp_path / "resumed").read_events())

    assert train(config, tmp_path / "resumed", cancel=lambda: step_logged(3)) == "cancelled"
    resumed = run_training(config, tmp_path / "resumed")
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-5)
    a = load_file(straight.output_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.output_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:   # the averages: without the checkpoint's EMA state they would start over at step 4
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------- methods and files
def test_pivotal_tuning_trains_a_variant_for_free(toy_dataset, tmp_path):
    config = quick_config(toy_dataset, method="pivotal", adapter="loha", instance_prompt="a photo of <sks>",
                          learning_rate=5e-2, max_train_steps=3, lora_targets="attention_ff")
    run = run_training(config, tmp_path / "run")
    kinds = {a.kind: a for a in run_artifacts(run.path).artifacts}
    assert Path(kinds["lora"].path).name == "peft_loha_weights.safetensors" and "embedding" in kinds
    engine = GenerationEngine(device="cpu")
    options = replace(OPTIONS, prompt="a photo of <sks>")
    only_embedding = pixels(engine.generate("tiny-sd1", [kinds["embedding"]], options))
    both = pixels(engine.generate("tiny-sd1", list(kinds.values()), options))
    assert np.abs(both - only_embedding).mean() > 1


def test_diffusers_file_uses_the_spelling_older_loaders_read(tmp_path):
    """Issue 17: text-encoder keys `text_encoder[_2].text_model.…` (transformers 4's CLIP paths, which diffusers
    0.35 needs and 0.42 also reads) and only LoraConfig fields peft 0.17 knows, for every component in the file."""
    older_peft_fields = {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "lora_dropout", "bias",
                         "use_rslora", "use_dora", "lora_bias", "init_lora_weights", "fan_in_fan_out"}
    for run_name, components in (("lora", {"unet", "text_encoder"}),
                                 ("lora_ema_sdxl", {"unet", "text_encoder", "text_encoder_2"})):
        run = trained_run(run_name)
        state, configs = read_adapter_file(run / "output" / "pytorch_lora_weights.safetensors")
        assert set(split_components(state)) == components == set(configs)
        for key in state:
            if key.startswith("text_encoder"):
                assert re.match(r"text_encoder(_2)?\.text_model\.encoder\.layers\.\d+\.", key), key
        for config in configs.values():
            assert set(config) <= older_peft_fields, set(config) - older_peft_fields
            assert {"rank_pattern", "target_modules", "r", "lora_alpha"} <= set(config)   # 0.35 reads them
        # Beside it, the file AUTOMATIC1111 and ComfyUI load, and a README saying which is which.
        readme = (run / "output" / "README.txt").read_text()
        assert (run / "output" / f"{run.name}.safetensors").exists()
        assert "pytorch_lora_weights.safetensors" in readme and f"{run.name}.safetensors" in readme
        assert "AUTOMATIC1111" in readme and "diffusers" in readme


def test_pivotal_export_named_like_its_trigger_word_keeps_both_files(tmp_path):
    """Issue 17: a run called `sks` with the token <sks> wrote the embedding (sks.safetensors) over the LoRA."""
    run = tmp_path / "sks"
    shutil.copytree(trained_run("pivotal"), run)
    written = export_run(run, "a1111", tmp_path / "export", model_card=False)
    assert {p.name for p in written} == {"sks_lora.safetensors", "sks.safetensors"}
    lora, _ = read_lora_file(tmp_path / "export" / "sks_lora.safetensors")
    embedding, _ = read_lora_file(tmp_path / "export" / "sks.safetensors")
    assert any(k.endswith(".lora_down.weight") for k in lora) and set(embedding) == {"emb_params"}


@pytest.mark.parametrize("run_name", ["dora_sdxl", "lokr_sd1", "loha_sd1"])
def test_model_card_names_the_adapter_and_its_snippet_loads_the_file(run_name, tmp_path, monkeypatch):
    import huggingface_hub

    run = trained_run(run_name)
    adapter = adapter_type(run_name)
    export_run(run, "diffusers", tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert {adapter, "lora"} <= set(card.data.tags)
    assert ("lycoris" in card.data.tags) == (adapter in ("lokr", "loha"))
    summary = adapter_for_file(run_artifacts(run).artifacts[0].path).summary
    assert f"A {summary} of" in card.text

    # Run the card's snippet as a user would (local folder for the repo, CPU, fp32).
    code = card.text.split("```python\n")[1].split("```")[0]
    model = f"tiny-{run_name.rsplit('_', 1)[1]}"
    code = (code.replace(f'"{model}"', repr(str(tiny_model_path(model)))).replace("torch.float16", "torch.float32")
            .replace('.to("cuda")', "").replace("path/to/this/folder", str(tmp_path)))
    code = "\n".join(line for line in code.splitlines() if not line.startswith("image = "))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(Path(repo) / name))
    namespace: dict = {}
    exec(compile(code, "model-card-snippet", "exec"), namespace)  # noqa: S102 - our own card
    held = loaded_state(namespace["pipe"], "default")
    file_state, _ = read_adapter_file(tmp_path / adapter_for_file(run_artifacts(run).artifacts[0].path).file_name)
    assert held.keys() == file_state.keys()
    assert all(torch.equal(held[k].reshape(v.shape), v) for k, v in file_state.items())


def test_train_tab_offers_the_adapter_types_and_each_ones_settings(tmp_path):
    from sdtune_ui.app.jobs import JobQueue
    from sdtune_ui.app.ops import GpuInfo
    from sdtune_ui.ui.app import build_app, options_for
    from sdtune_ui.ui.context import AppContext
    from sdtune_ui.ui.form import Form

    jobs = JobQueue()
    try:
        ctx = AppContext(tmp_path / "data", jobs)
        components = build_app(ctx, options_for(ctx, gpu=GpuInfo(None, 0.0))).config["components"]
    finally:
        jobs.close()
    by_id = {c["props"].get("elem_id"): c["props"] for c in components if c["props"].get("elem_id")}
    adapter = by_id["cfg-adapter"]
    choices = [c[1] for c in adapter["choices"]]
    assert adapter["visible"] is True and adapter["value"] == choices[0] == "lora"   # plain LoRA is the default
    assert sorted(choices) == ["dora", "loha", "lokr", "lora"]
    assert by_id["cfg-lokr_factor"]["visible"] is False and by_id["cfg-use_ema"]["visible"] is True

    names = ["adapter", "lokr_factor", "decompose_both", "rank", "use_ema"]
    from sdtune_ui.config import field_info

    form = Form({n: None for n in names}, {f.name: dict(f.metadata) for f in field_info() if f.name in names})
    visible = {n: u.get("visible") for n, u in zip(names, form.updates({}, "pivotal", "lokr"))}
    assert visible == {n: True for n in names}
    visible = {n: u.get("visible") for n, u in zip(names, form.updates({}, "lora", "dora"))}
    assert visible == {"adapter": True, "lokr_factor": False, "decompose_both": False, "rank": True, "use_ema": True}
    visible = {n: u.get("visible") for n, u in zip(names, form.updates({}, "textual_inversion", "lokr"))}
    assert not any(visible.values())


def test_a_file_for_another_family_is_refused_with_a_reason():
    from sdtune_ui.errors import ModelLoadError

    artifact = run_artifacts(trained_run("lokr_sdxl")).artifacts[0]
    with pytest.raises(ModelLoadError, match="text_encoder_2|do not fit"):
        GenerationEngine(device="cpu").generate("tiny-sd1", [artifact], OPTIONS)
