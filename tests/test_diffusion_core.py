"""dermbench.diffusion's shared machinery on the tiny model (CPU, no download): the parts built from
configs and their loading errors, the content-addressed store, the noise-prediction training loop,
Textual Inversion and LoRA (what they change and what they must not), and batched, cached
generation (counts, shapes, provenance, per-image seeds, cache hits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from dermbench.data.generated import IMAGES, MANIFEST_COLUMNS, read_generated
from dermbench.diffusion import components as components_module
from dermbench.diffusion import generation, training
from dermbench.diffusion.components import (
    checkpoint_folder,
    folder_digest,
    load_components,
    module_digest,
    save_components,
    tiny_components,
)
from dermbench.diffusion.generation import (
    cached_generation,
    check_settings,
    generate_into,
    resized_generation,
)
from dermbench.diffusion.store import cached_entry, diffusion_cache_root
from dermbench.diffusion.training import encode_prompts, train_denoiser
from dermbench.errors import ConfigError, DermbenchError
from dermbench.methods.majority2minority.adapters import (
    add_concept_tokens,
    add_lora,
    load_concepts,
    load_lora,
    save_concepts,
    save_lora,
    train_textual_inversion,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16  # 4 x 4 latents: a UNet step takes milliseconds on one CPU thread
CPU = torch.device("cpu")
QUIET = Console(quiet=True)
SETTINGS = {"sampler": "ddim", "steps": 2, "guidance": 2.0, "batch_size": 4, "strength": None}


@pytest.fixture
def tiny(tmp_path):
    """Fresh tiny parts (seed 0), frozen as a loaded checkpoint would be."""
    c = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / "tokenizer")
    c.freeze()
    return c


def skin_images(n: int, seed: int = 0) -> np.ndarray:
    """n 16 px 'skin' images: a flat colour with a darker square, in a few colours."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        base = rng.integers(60, 230, 3)
        out[i] = base
        out[i, 5:11, 5:11] = base * 0.5
    return np.clip(out.astype(int) + rng.integers(-8, 8, out.shape), 0, 255).astype(np.uint8)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    after = module.state_dict()
    assert set(after) == set(before), "the module's parameter names changed"
    return {k for k in before if not torch.equal(before[k], after[k])}


def requests(n: int, *, img2img: bool = False, seed0: int = 100) -> pd.DataFrame:
    tones = ["A", "B", "C"]
    return pd.DataFrame(
        {
            "sample_id": [f"gen-{i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "class_name": [("benign", "malignant")[i % 2] for i in range(n)],
            "fst": [5 if img2img else "" for _ in range(n)],
            "tone3": [tones[i % 3] for i in range(n)],
            "prompt": [
                f"{('benign', 'malignant')[i % 2]} skin disease on {('lighter', 'brown', 'darker')[i % 3]} "
                "skin tone"
                for i in range(n)
            ],
            "seed": [seed0 + i for i in range(n)],
            "source_id": [f"real-{i}" if img2img else "" for i in range(n)],
            "domain": "clinical",
        }
    )


# ------------------------------------------------------------------------------------ components


def test_tiny_parts_build_from_configs_with_no_hub_access(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the hub was asked")
    )
    c = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / "tok")
    assert c.source == {"kind": "tiny", "image_size": SIZE, "init_seed": 0}
    assert c.latent_scale == 4
    with torch.no_grad():
        latent = c.vae.encode(torch.zeros(2, 3, SIZE, SIZE)).latent_dist.mean
        assert latent.shape == (2, 4, SIZE // 4, SIZE // 4)
        assert c.vae.decode(latent).sample.shape == (2, 3, SIZE, SIZE)
        hidden = encode_prompts(c, ["an image of skin", ""], CPU)
        assert hidden.shape == (2, c.tokenizer.model_max_length, 32)
        eps = c.unet(latent, torch.tensor([10, 500]), encoder_hidden_states=hidden).sample
        assert eps.shape == latent.shape
    # the same seed builds the same weights; another seed other weights
    again = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / "tok2")
    other = tiny_components(SIZE, seed=1, tokenizer_dir=tmp_path / "tok3")
    assert module_digest(again.unet) == module_digest(c.unet) != module_digest(other.unet)
    assert module_digest(again.vae) == module_digest(c.vae)
    with pytest.raises(ConfigError, match="divisible by 4, got 18"):
        tiny_components(18, seed=0, tokenizer_dir=tmp_path / "tok4")


def test_the_character_tokenizer_round_trips_every_prompt_the_templates_make(tiny, tmp_path):
    from transformers import CLIPTokenizer

    tok = tiny.tokenizer
    for prompt in (
        "malignant skin disease on darker skin tone",
        "an image of mal-class on the skin of a very dark-skinned individual",
        "benign, 3x (fst v-vi)!",
    ):
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1], "every printable character has a token"
        assert len(ids) == len(prompt.replace(" ", "")) + 2, "one token per character"
        decoded = tok.decode(ids, skip_special_tokens=True)
        # CLIP's pre-tokenizer makes punctuation its own word, so decoding spaces it ("dark - skinned"),
        # as the real CLIP tokenizer does; the characters come back in order
        assert decoded.replace(" ", "") == prompt.replace(" ", "")
        if prompt.replace(" ", "").isalpha():
            assert decoded == prompt
    # upper case is folded as CLIP does
    assert tok.decode(tok("An Image").input_ids, skip_special_tokens=True) == "an image"
    # the folder it was written to loads back as the same tokenizer (what a cached base model reads)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert reloaded("benign skin").input_ids == tok("benign skin").input_ids
    assert len(reloaded) == len(tok) == tiny.text_encoder.config.vocab_size


def test_a_missing_local_model_folder_names_the_path_and_the_expected_layout(tmp_path):
    absent = tmp_path / "no-such-sd"
    with pytest.raises(
        ConfigError, match=rf"diffusion model folder {absent} does not exist.*diffusers layout.*hub id"
    ):
        checkpoint_folder(str(absent))
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoint_folder("./relative/missing-model")
    half = tmp_path / "half"
    (half / "unet").mkdir(parents=True)
    (half / "vae").mkdir()
    with pytest.raises(ConfigError, match=rf"{half} lacks text_encoder/, tokenizer/, scheduler/"):
        checkpoint_folder(str(half))


def test_a_hub_id_not_in_the_local_cache_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    calls = []
    real = huggingface_hub.snapshot_download

    def recording(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        assert kwargs.get("local_files_only"), "offline: only the local cache may be read"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    with pytest.raises(DermbenchError) as err:
        load_components("dermbench-tests/no-such-diffusion-model")
    message = str(err.value)
    assert "'dermbench-tests/no-such-diffusion-model'" in message
    assert "HF_HUB_OFFLINE" in message and "local Hugging Face cache" in message
    assert "huggingface-cli download dermbench-tests/no-such-diffusion-model" in message
    assert "local folder in the diffusers layout" in message and "--profile tiny" in message
    assert calls == [True]


def test_a_hub_error_when_online_is_reported_with_the_id(tmp_path, monkeypatch):
    """Not offline: the local cache misses, the download fails (no network here: simulated)."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fake(repo_id, *, local_files_only=False, **kwargs):
        if local_files_only:
            raise FileNotFoundError("not cached")
        raise ConnectionError("Name or service not known\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(
        DermbenchError,
        match=r"'some/model': ConnectionError: Name or service not known\. On a "
        r"machine with network access run `huggingface-cli download some/model`",
    ):
        checkpoint_folder("some/model")


def test_a_saved_model_loads_back_from_its_folder_with_a_content_identity(tiny, tmp_path):
    folder = tmp_path / "sd"
    save_components(tiny, folder)
    loaded = load_components(str(folder))
    assert loaded.source["kind"] == "pretrained"
    assert loaded.source["identity"] == f"folder:{folder.resolve()}@{folder_digest(folder)}"
    for part in ("unet", "vae", "text_encoder"):
        assert module_digest(getattr(loaded, part)) == module_digest(getattr(tiny, part))
        assert not any(p.requires_grad for p in getattr(loaded, part).parameters()), f"{part} loads frozen"
    # the identity follows the weights: another byte in a weight file is another model
    before = folder_digest(folder)
    weights = next((folder / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert folder_digest(folder) != before


def test_module_digest_changes_with_any_weight_and_only_then(tiny, tmp_path):
    before = module_digest(tiny.unet)
    assert module_digest(tiny.unet) == before
    weight = next(tiny.unet.parameters())
    with torch.no_grad():
        weight.view(-1)[0] += 1e-6
    assert module_digest(tiny.unet) != before
    fresh = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / "again")
    assert module_digest(fresh.unet) == before, "the same weights give the same digest"
    assert module_digest(fresh.text_encoder) == module_digest(tiny.text_encoder)
    buffers = dict(fresh.text_encoder.named_buffers())
    assert buffers, "buffers are part of the identity too"


# ------------------------------------------------------------------------------------------ store


def _writer(calls: list[int], payload: bytes = b"weights"):
    def build(folder):
        calls.append(1)
        (folder / "sub").mkdir()
        (folder / "sub" / "w.bin").write_bytes(payload)
        (folder / "notes.txt").write_text("made")

    return build


def test_a_second_lookup_is_a_hit_and_does_not_build():
    calls: list[int] = []
    first = cached_entry("finetuned", {"base": "b", "steps": 3}, _writer(calls))
    assert not first.hit and first.rebuilt_because is None and calls == [1]
    assert first.path == diffusion_cache_root() / "finetuned" / first.key
    assert (first.path / "sub" / "w.bin").read_bytes() == b"weights"
    said = []
    second = cached_entry("finetuned", {"steps": 3, "base": "b"}, _writer(calls), say=said.append)
    assert second.hit and second.key == first.key and calls == [1]
    assert any("found in the cache" in s for s in said)
    assert second.info() == {"kind": "finetuned", "key": first.key, "path": str(first.path), "hit": True}
    other = cached_entry("finetuned", {"base": "b", "steps": 4}, _writer(calls))
    assert not other.hit and other.key != first.key and calls == [1, 1]


@pytest.mark.parametrize("damage", ["flip", "delete", "entry-json"])
def test_a_corrupted_entry_is_detected_and_rebuilt(damage):
    calls: list[int] = []
    entry = cached_entry("generations", {"k": 1}, _writer(calls))
    target = entry.path / "sub" / "w.bin"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[3] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (entry.path / "entry.json").write_text("{not json")
    again = cached_entry("generations", {"k": 1}, _writer(calls))
    assert not again.hit and calls == [1, 1] and again.key == entry.key
    assert again.rebuilt_because
    if damage == "flip":
        assert again.rebuilt_because == "sub/w.bin does not match its checksum in entry.json"
    assert again.info()["rebuilt_because"] == again.rebuilt_because
    assert target.read_bytes() == b"weights"
    assert cached_entry("generations", {"k": 1}, _writer(calls)).hit and calls == [1, 1]


def test_a_failing_build_leaves_no_entry_and_the_next_call_builds():
    def broken(folder):
        (folder / "half.bin").write_bytes(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cached_entry("base", {"k": 2}, broken)
    root = diffusion_cache_root() / "base"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    calls: list[int] = []
    entry = cached_entry("base", {"k": 2}, _writer(calls))
    assert not entry.hit and entry.rebuilt_because is None and calls == [1]


# --------------------------------------------------------------------------------------- training


def _unet_params(c):
    c.unet.requires_grad_(True)
    return list(c.unet.parameters())


def test_train_denoiser_lowers_the_loss_and_changes_only_the_unet(tiny):
    images = skin_images(8)
    prompts = ["an image of skin"] * 8
    vae, text = snapshot(tiny.vae), snapshot(tiny.text_encoder)
    unet = snapshot(tiny.unet)
    history = train_denoiser(
        tiny,
        images,
        prompts,
        params=_unet_params(tiny),
        steps=40,
        batch_size=8,
        lr=2e-3,
        seed=0,
        device=CPU,
        console=QUIET,
        label="test",
    )
    assert len(history) == 40 and all(np.isfinite(history))
    assert np.mean(history[-8:]) < 0.8 * np.mean(history[:8]), history
    assert changed(vae, tiny.vae) == set() and changed(text, tiny.text_encoder) == set()
    assert len(changed(unet, tiny.unet)) > 0.9 * len(unet)
    # frozen again afterwards, in eval mode
    assert not any(p.requires_grad for p in tiny.unet.parameters()) and not tiny.unet.training


def test_train_denoiser_is_deterministic_for_a_seed(tmp_path):
    digests = []
    for k in range(2):
        c = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / f"tok{k}")
        c.freeze()
        train_denoiser(
            c,
            skin_images(4),
            ["x"] * 4,
            params=_unet_params(c),
            steps=3,
            batch_size=2,
            lr=1e-3,
            seed=7,
            device=CPU,
            console=QUIET,
            label="test",
            uncond_prob=0.5,
        )
        digests.append(module_digest(c.unet))
    assert digests[0] == digests[1]


def test_a_loss_that_stops_being_finite_stops_training_at_its_step(tiny, monkeypatch):
    real = training.noise_target
    calls = []

    def poisoned(c, latents, noise, t):
        calls.append(1)
        target = real(c, latents, noise, t)
        return target * float("nan") if len(calls) == 3 else target

    monkeypatch.setattr(training, "noise_target", poisoned)
    with pytest.raises(
        DermbenchError, match=r"my fine-tuning: the loss became nan at step 3 \(lr 0\.001\); lower"
    ):
        train_denoiser(
            tiny,
            skin_images(4),
            ["x"] * 4,
            params=_unet_params(tiny),
            steps=10,
            batch_size=2,
            lr=1e-3,
            seed=0,
            device=CPU,
            console=QUIET,
            label="my fine-tuning",
        )


def test_an_absurd_learning_rate_is_caught_not_trained_through(tiny):
    with pytest.raises(DermbenchError, match=r"the loss became (nan|inf) at step \d+ \(lr 1e\+20\)"):
        train_denoiser(
            tiny,
            skin_images(4),
            ["x"] * 4,
            params=_unet_params(tiny),
            steps=30,
            batch_size=4,
            lr=1e20,
            seed=0,
            device=CPU,
            console=QUIET,
            label="too fast",
        )


def test_train_denoiser_refuses_mismatched_inputs(tiny):
    with pytest.raises(DermbenchError, match="t: 4 images but 3 prompts"):
        train_denoiser(
            tiny,
            skin_images(4),
            ["x"] * 3,
            params=_unet_params(tiny),
            steps=1,
            batch_size=1,
            lr=1e-3,
            seed=0,
            device=CPU,
            console=QUIET,
            label="t",
        )
    with pytest.raises(DermbenchError, match="t: no parameter to train"):
        train_denoiser(
            tiny,
            skin_images(4),
            ["x"] * 4,
            params=[],
            steps=1,
            batch_size=1,
            lr=1e-3,
            seed=0,
            device=CPU,
            console=QUIET,
            label="t",
        )


# --------------------------------------------------------------------------------------- adapters


def _ti(c, steps=4, init_word="skin"):
    tokens = ["ben-class", "mal-class"]
    ids = add_concept_tokens(c, tokens, init_word=init_word)
    labels = np.array([0, 1, 0, 1, 0, 1])
    prompts = [f"An image of {tokens[y]}" for y in labels]
    train_textual_inversion(
        c, skin_images(6), prompts, ids, steps=steps, batch_size=3, lr=5e-2, seed=0, device=CPU, console=QUIET
    )
    return tokens, ids


def test_textual_inversion_changes_only_the_new_tokens_rows(tiny):
    vocab_before = len(tiny.tokenizer)
    unet, vae = snapshot(tiny.unet), snapshot(tiny.vae)
    skin_ids = tiny.tokenizer("skin", add_special_tokens=False).input_ids
    tokens = ["ben-class", "mal-class"]
    ids = add_concept_tokens(tiny, tokens, init_word="skin")
    assert ids == [vocab_before, vocab_before + 1] and len(tiny.tokenizer) == vocab_before + 2
    assert tiny.tokenizer.tokenize("An image of mal-class") == [
        "a",
        "n</w>",
        "i",
        "m",
        "a",
        "g",
        "e</w>",
        "o",
        "f</w>",
        "mal-class",
    ]
    emb = tiny.text_encoder.get_input_embeddings().weight
    for i in ids:  # initialised as the paper does: the mean embedding of the word "skin"
        torch.testing.assert_close(emb[i], emb[skin_ids].mean(0))
    text = snapshot(tiny.text_encoder)
    labels = np.array([0, 1, 0, 1, 0, 1])
    train_textual_inversion(
        tiny,
        skin_images(6),
        [f"An image of {tokens[y]}" for y in labels],
        ids,
        steps=4,
        batch_size=3,
        lr=5e-2,
        seed=0,
        device=CPU,
        console=QUIET,
    )
    [key] = [k for k in text if k.endswith("token_embedding.weight")]
    assert changed(text, tiny.text_encoder) == {key}, "only the embedding matrix of the text encoder changes"
    after = tiny.text_encoder.state_dict()[key]
    rows = (after != text[key]).any(dim=1).nonzero().flatten().tolist()
    assert rows == ids, "only the new tokens' rows changed"
    assert changed(unet, tiny.unet) == set() and changed(vae, tiny.vae) == set()
    assert not any(p.requires_grad for p in tiny.text_encoder.parameters())
    assert not emb._backward_hooks, "the gradient mask hook is removed afterwards"


def test_concept_tokens_refuse_clashes(tiny):
    add_concept_tokens(tiny, ["ben-class"], init_word="skin")
    with pytest.raises(ConfigError, match="already exist or repeat"):
        add_concept_tokens(tiny, ["ben-class"], init_word="skin")
    with pytest.raises(ConfigError, match="already exist or repeat"):
        add_concept_tokens(tiny, ["x-class", "x-class"], init_word="skin")
    with pytest.raises(ConfigError, match="already exist or repeat"):
        add_concept_tokens(tiny, ["a"], init_word="skin")  # a single character is a vocabulary token


def _lora_names(unet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base, adapter = {}, {}
    for k, v in unet.state_dict().items():
        (adapter if "lora_" in k else base)[k.replace("base_layer.", "")] = v.detach().clone()
    return base, adapter


def test_lora_trains_only_adapter_weights(tiny):
    unet_before = snapshot(tiny.unet)
    text, vae = snapshot(tiny.text_encoder), snapshot(tiny.vae)
    params = add_lora(tiny, rank=4, alpha=4)
    named = {id(p): n for n, p in tiny.unet.named_parameters()}
    assert params and all("lora_" in named[id(p)] for p in params)
    assert all(any(t in named[id(p)] for t in ("to_q", "to_k", "to_v", "to_out.0")) for p in params)
    base0, adapter0 = _lora_names(tiny.unet)
    assert base0.keys() == unet_before.keys() and all(torch.equal(base0[k], unet_before[k]) for k in base0)
    train_denoiser(
        tiny,
        skin_images(6),
        ["an image of skin"] * 6,
        params=params,
        steps=4,
        batch_size=3,
        lr=1e-2,
        seed=0,
        device=CPU,
        console=QUIET,
        label="lora",
    )
    base1, adapter1 = _lora_names(tiny.unet)
    assert all(torch.equal(base1[k], unet_before[k]) for k in unet_before), (
        "the UNet's own weights are untouched"
    )
    moved = {k for k in adapter0 if not torch.equal(adapter0[k], adapter1[k])}
    assert moved == set(adapter0), "every adapter weight trained"
    assert changed(text, tiny.text_encoder) == set() and changed(vae, tiny.vae) == set()


def _unet_out(c, prompts):
    torch.manual_seed(3)
    latents = torch.randn(len(prompts), 4, SIZE // 4, SIZE // 4)
    with torch.no_grad():
        hidden = encode_prompts(c, prompts, CPU)
        return hidden, c.unet(
            latents, torch.tensor([400] * len(prompts)), encoder_hidden_states=hidden
        ).sample


def test_saved_concepts_and_lora_reproduce_the_same_outputs(tiny, tmp_path):
    tokens, _ = _ti(tiny)
    params = add_lora(tiny, rank=4, alpha=4)
    train_denoiser(
        tiny,
        skin_images(6),
        [f"An image of {t} on dark skin" for t in tokens * 3],
        params=params,
        steps=3,
        batch_size=3,
        lr=1e-2,
        seed=0,
        device=CPU,
        console=QUIET,
        label="lora",
    )
    tiny.freeze()
    save_concepts(tiny, tokens, tmp_path / "concepts.safetensors")
    save_lora(tiny, tmp_path / "lora.safetensors")
    prompts = ["An image of mal-class on dark skin", "An image of ben-class", "an image of skin"]
    hidden, out = _unet_out(tiny, prompts)

    fresh = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / "fresh-tok")
    fresh.freeze()
    _, plain = _unet_out(fresh, ["an image of skin"])
    assert not torch.allclose(plain, out[2:]), "the adapted model differs from the base"
    load_concepts(fresh, tmp_path / "concepts.safetensors", tokens=tokens)
    load_lora(fresh, tmp_path / "lora.safetensors", rank=4, alpha=4)
    fresh.freeze()
    assert fresh.tokenizer(prompts).input_ids == tiny.tokenizer(prompts).input_ids
    hidden2, out2 = _unet_out(fresh, prompts)
    torch.testing.assert_close(hidden2, hidden, rtol=0, atol=0)
    torch.testing.assert_close(out2, out, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------- generation


def _rows(init):
    return None if init is None else np.arange(len(init))


def _generate(c, reqs, *, settings=SETTINGS, init=None, sources=None):
    return cached_generation(
        c,
        reqs,
        weights="tiny-test",
        settings=settings,
        image_size=SIZE,
        device=CPU,
        console=QUIET,
        say=lambda _m: None,
        label="test",
        init_images=init,
        init_rows=_rows(init),
        sources=sources,
    )


def test_txt2img_writes_one_image_per_request_with_its_provenance(tiny):
    reqs = requests(5)
    entry = _generate(tiny, reqs)
    assert not entry.hit
    images = np.load(entry.path / IMAGES, mmap_mode="r")
    assert images.shape == (5, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert isinstance(images, np.memmap), "the generation is memory-mapped"
    split = read_generated(entry.path, classes=("benign", "malignant"))
    assert len(split) == 5 and np.array_equal(split.images, images)
    t = split.table
    assert (t["tone_source"] == "generated").all()
    assert t["sample_id"].tolist() == reqs["sample_id"].tolist()
    assert t["label"].tolist() == reqs["label"].tolist() and t["tone3"].tolist() == reqs["tone3"].tolist()
    assert t["prompt"].tolist() == reqs["prompt"].tolist() and t["fst"].isna().all()
    manifest = pd.read_csv(entry.path / "manifest.csv", keep_default_na=False)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest["seed"].tolist() == reqs["seed"].tolist()
    assert (manifest["source_id"] == "").all()
    assert len({images[i].tobytes() for i in range(5)}) == 5, "each seed gives its own image"


def test_img2img_writes_one_image_per_source_and_names_the_source(tiny):
    reqs = requests(6, img2img=True)
    init = skin_images(6, seed=5)
    with pytest.raises(DermbenchError, match="image-to-image needs an identity for its source images"):
        _generate(tiny, reqs, init=init)
    settings = {**SETTINGS, "strength": 0.5, "steps": 4}
    entry = _generate(tiny, reqs, settings=settings, init=init, sources="split-digest")
    images = np.load(entry.path / IMAGES)
    assert images.shape == (6, SIZE, SIZE, 3)
    split = read_generated(entry.path, classes=("benign", "malignant"))
    t = split.table
    assert t["source_id"].tolist() == [f"real-{i}" for i in range(6)]
    assert t["fst"].tolist() == [5.0] * 6 and t["tone3"].tolist() == reqs["tone3"].tolist()
    assert pd.read_csv(entry.path / "manifest.csv")["seed"].tolist() == reqs["seed"].tolist()
    # other source images are another generation
    assert (
        _generate(tiny, reqs, settings=settings, init=init[::-1].copy(), sources="other-digest").key
        != entry.key
    )
    with pytest.raises(DermbenchError, match="6 requests but 2 source rows"):
        generate_into(
            np.zeros((6, SIZE, SIZE, 3), np.uint8),
            tiny,
            reqs,
            settings=settings,
            device=CPU,
            console=QUIET,
            label="t",
            init_images=init,
            init_rows=np.arange(2),
        )
    # several requests may start from one source image, read batch by batch without copies
    twice = pd.concat([reqs.iloc[:3]] * 2, ignore_index=True)
    out = np.zeros((6, SIZE, SIZE, 3), np.uint8)
    generate_into(
        out,
        tiny,
        twice,
        settings=settings,
        device=CPU,
        console=QUIET,
        label="t",
        init_images=init,
        init_rows=np.array([0, 1, 2, 0, 1, 2]),
    )
    assert np.array_equal(out[:3], out[3:]), "the same source and seed give the same image"


@pytest.mark.parametrize("img2img", [False, True])
def test_an_image_depends_on_its_seed_not_on_its_batch(tiny, img2img):
    reqs = requests(4, img2img=img2img)
    init = skin_images(4, seed=9) if img2img else None
    strength = 0.6 if img2img else None
    outs = {}
    for batch in (1, 4):
        out = np.zeros((4, SIZE, SIZE, 3), np.uint8)
        generate_into(
            out,
            tiny,
            reqs,
            settings={**SETTINGS, "batch_size": batch, "strength": strength},
            device=CPU,
            console=QUIET,
            label="t",
            init_images=init,
            init_rows=_rows(init),
        )
        outs[batch] = out
    assert len({outs[4][i].tobytes() for i in range(4)}) == 4, "the seeds give different images"
    assert np.abs(outs[1].astype(int) - outs[4].astype(int)).max() <= 1
    # the image of a seed is the same wherever it falls in the request table
    backwards = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    generate_into(
        backwards,
        tiny,
        reqs.iloc[::-1].reset_index(drop=True),
        settings={**SETTINGS, "strength": strength},
        device=CPU,
        console=QUIET,
        label="t",
        init_images=None if init is None else init[::-1].copy(),
        init_rows=_rows(init),
    )
    assert np.abs(backwards[::-1].astype(int) - outs[4].astype(int)).max() <= 1


def test_a_second_generation_with_the_same_inputs_is_a_hit_without_sampling(tiny, monkeypatch):
    reqs = requests(3)
    first = _generate(tiny, reqs)
    images = np.load(first.path / IMAGES)
    monkeypatch.setattr(generation, "generate_into", lambda *a, **k: pytest.fail("sampled again"))
    second = _generate(tiny, reqs)
    assert second.hit and second.key == first.key and second.path == first.path
    assert np.array_equal(np.load(second.path / IMAGES), images)
    # any change of requests or settings is another entry (the failing sampler proves a miss)
    for other in (
        dict(reqs=requests(3, seed0=200)),
        dict(settings={**SETTINGS, "steps": 3}),
        dict(settings={**SETTINGS, "guidance": 1.0}),
        dict(settings={**SETTINGS, "sampler": "dpm"}),
    ):
        with pytest.raises(pytest.fail.Exception, match="sampled again"):
            _generate(tiny, other.get("reqs", reqs), settings=other.get("settings", SETTINGS))


def test_a_corrupted_generation_is_sampled_again(tiny):
    reqs = requests(2)
    first = _generate(tiny, reqs)
    path = first.path / IMAGES
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    again = _generate(tiny, reqs)
    assert not again.hit and again.rebuilt_because == f"{IMAGES} does not match its checksum in entry.json"


def test_resized_generation_is_cached_and_keeps_the_manifest(tiny):
    entry = _generate(tiny, requests(3))
    assert resized_generation(entry, SIZE, say=lambda _m: None) == entry.path
    folder = resized_generation(entry, 8, say=lambda _m: None)
    assert np.load(folder / IMAGES).shape == (3, 8, 8, 3)
    assert (folder / "manifest.csv").read_bytes() == (entry.path / "manifest.csv").read_bytes()
    assert resized_generation(entry, 8, say=lambda _m: None) == folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler": "euler"}, "sampler must be one of ddim, dpm, got 'euler'"),
        ({"steps": 0}, "steps and batch_size must be >= 1"),
        ({"strength": 1.5}, r"strength must be in \(0, 1\], got 1.5"),
        ({"strength": 0}, r"strength must be in \(0, 1\]"),
    ],
)
def test_sampler_settings_are_checked(change, message):
    with pytest.raises(ConfigError, match=message):
        check_settings({**SETTINGS, **change})
    with pytest.raises(ConfigError, match="lack guidance"):
        check_settings({k: v for k, v in SETTINGS.items() if k != "guidance"})


def test_generation_requests_must_carry_the_manifest_columns(tiny):
    with pytest.raises(DermbenchError, match="generation requests lack column.*seed"):
        _generate(tiny, requests(2).drop(columns=["seed"]))


def test_components_module_never_reads_the_hub_for_tiny(monkeypatch, tmp_path):
    """The tiny base (what the default CPU runs and the leaderboard use) never calls checkpoint_folder."""
    monkeypatch.setattr(
        components_module, "checkpoint_folder", lambda *a, **k: pytest.fail("hub/folder lookup")
    )
    c = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path / "t")
    save_components(c, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
