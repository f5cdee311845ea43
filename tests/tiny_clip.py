"""A tiny, random, deterministic CLIP model built offline, for tests.

It is saved as a plain Hugging Face CLIP folder (config, weights, image processor, tokenizer), the same layout
as a real CLIP checkpoint, so `sentence_transformers.SentenceTransformer(path)` loads it through exactly the
code path the real model takes, text and image. ~350 KB; building it takes well under a second once torch is
imported.

    from tests.tiny_clip import build_tiny_clip
    model_dir = build_tiny_clip(tmp_path / "tiny-clip")

`build_full_clip` makes a full-size CLIP ViT-B/32 the same way (CLIPConfig defaults: 12+12 layers, 224 px input,
patch 32, projection 512) with random weights and the same byte-level tokenizer: it computes exactly what the real
one does, so it gives honest speed figures and a real parity test offline. ~500 MB of weights; build it once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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
