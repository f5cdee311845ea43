"""Tiny, random, deterministic CLIP, DINOv2 and SigLIP 2 models built offline, for tests.

It is saved as a plain Hugging Face CLIP folder (config, weights, image processor, tokenizer), the same layout
as a real CLIP checkpoint, so `sentence_transformers.SentenceTransformer(path)` loads it through exactly the
code path the real model takes, text and image. ~350 KB; building it takes well under a second once torch is
imported.

    from tests.tiny_clip import build_tiny_clip
    model_dir = build_tiny_clip(tmp_path / "tiny-clip")

`build_full_clip` makes a full-size CLIP ViT-B/32 the same way (CLIPConfig defaults: 12+12 layers, 224 px input,
patch 32, projection 512) with random weights and the same byte-level tokenizer: it computes exactly what the real
one does, so it gives honest speed figures and a real parity test offline. ~500 MB of weights; build it once.

`build_tiny_dinov2` and `build_tiny_siglip2` do the same for the transformers models VPM_MODEL also accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SEED = 1234
IMAGE_SIZE = 32
# Written last, so a folder that has it was built completely (an interrupted build is rebuilt).
_DONE_MARKER = ".tiny-clip-complete"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (CLIP's tokenizer uses the same one)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=False))


def _write_tokenizer_files(dest: Path) -> int:
    """Byte-level vocab (256 bytes, the same with `</w>`, two specials) and no merges; returns vocab size."""
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def _build(dest: Path, full: bool = False) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab_size = _write_tokenizer_files(dest)
    # 77 like real CLIP: longer queries are truncated instead of overrunning the position embeddings.
    tokenizer = CLIPTokenizer(str(dest / "vocab.json"), str(dest / "merges.txt"), model_max_length=77)
    if full:
        _build_full(dest, tokenizer, vocab_size)
        return
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    # Weights come from the global RNG: seed it (and put it back) so every build is the same model.
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    model.save_pretrained(dest)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)


def _build_full(dest: Path, tokenizer, vocab_size: int) -> None:
    """CLIP ViT-B/32's shapes (CLIPConfig's defaults, patch 32, projection 512) with random weights."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={"patch_size": 32},
        projection_dim=512,
    )
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = CLIPModel(config).eval()
    model.save_pretrained(dest)
    # The real checkpoint's processor: shortest edge 224, centre crop 224, CLIP's mean and std.
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(dest)


def build_full_clip(dest: Path) -> Path:
    """Build the full-size random CLIP ViT-B/32 at `dest` and return it; idempotent like build_tiny_clip."""
    return build_tiny_clip(dest, full=True)


def build_tiny_clip(dest: Path, *, full: bool = False) -> Path:
    """Build the tiny CLIP at `dest` and return it; idempotent (a complete earlier build is reused)."""
    dest = Path(dest)
    if (dest / _DONE_MARKER).exists():
        return dest
    if dest.is_dir() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} already holds other files; build the tiny CLIP in a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename, so parallel or interrupted builds never leave half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        _build(staging, full)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / _DONE_MARKER).write_text("ok\n", encoding="utf-8")
    try:
        os.replace(staging, dest)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        # The rename is atomic, so a complete `dest` means another build finished first.
        if (dest / _DONE_MARKER).exists():
            return dest
        raise FileExistsError(f"{dest} already holds other files; build the tiny CLIP elsewhere") from None
    return dest


# ------------------------------------------------------------------------------------- DINOv2 and SigLIP 2
#
# Tiny random checkpoints saved with `save_pretrained` in the layout of the real ones (`facebook/dinov2-small`;
# `google/siglip2-base-patch16-224`, which ships as model_type siglip with a Gemma tokenizer), so `VPM_MODEL=<folder>`
# loads them through exactly the code path a real one takes (vpm/models/hf_models.py). A few hundred KB each.

HF_SEED = 4321


def _tiny_gemma_tokenizer():
    """A Gemma tokenizer (byte-fallback BPE, as SigLIP 2's) with the special tokens, the lower-case letters, the
    digits and the 256 byte tokens: anything else it spells out byte by byte."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(char, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=64)


def _build_dinov2(dest: Path) -> None:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    # Position embeddings for a larger input than the crop, as the real ones (518 px, fed 224 px crops): the model
    # interpolates them to the crop's grid, and the ONNX export must do the same.
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=2 * IMAGE_SIZE - 8, patch_size=8)
    with torch.random.fork_rng():
        torch.manual_seed(HF_SEED)
        model = Dinov2Model(config).eval()
    model.save_pretrained(dest)
    # The real checkpoints' processor, scaled down: short side 256 -> 40, centre crop 224 -> 32, bicubic, ImageNet.
    BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                      resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(dest)


def _build_siglip2(dest: Path) -> None:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = _tiny_gemma_tokenizer()
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 2,
                     "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": 16},
    )
    with torch.random.fork_rng():
        torch.manual_seed(HF_SEED)
        model = SiglipModel(config).eval()
    model.save_pretrained(dest)
    # The real checkpoint's processor, scaled down: a square resize (224 -> 32), bilinear, mean and std 0.5.
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2,
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)


def _build_atomically(dest: Path, build: Callable[[Path], None]) -> Path:
    """Build beside `dest` and rename, so parallel or interrupted builds never leave half a model; idempotent."""
    dest = Path(dest)
    if (dest / _DONE_MARKER).exists():
        return dest
    if dest.is_dir() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} already holds other files; build the tiny model in a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / _DONE_MARKER).write_text("ok\n", encoding="utf-8")
    try:
        os.replace(staging, dest)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (dest / _DONE_MARKER).exists():  # another build finished first
            return dest
        raise
    return dest


def build_tiny_dinov2(dest: Path) -> Path:
    """A tiny random DINOv2 (hidden size 32, 2 layers, patch 8, 32 px crops of a 56 px grid) at `dest`."""
    return _build_atomically(dest, _build_dinov2)


def build_tiny_siglip2(dest: Path) -> Path:
    """A tiny random SigLIP 2 (fixed resolution: model_type siglip, Gemma tokenizer, 64 text positions) at `dest`."""
    return _build_atomically(dest, _build_siglip2)
