"""The inference API: a model folder (training/model_folder.py) with its own preprocessing.

    from training.inference import X2VLMPredictor
    predictor = X2VLMPredictor("export/")                  # CPU, or the GPU when there is one
    predictor.embed_images(["a.jpg", b"...", pil_image])   # (N, embed_dim), normalised
    predictor.embed_texts(["a red circle"])                # (N, embed_dim), normalised
    predictor.score(["a.jpg", "b.jpg"], ["a red circle", "two squares"])  # ITM probability per pair
    predictor.ground("a.jpg", "the red circle")            # Box(x, y, w, h) in a.jpg's pixels
    predictor.rank(paths, "a red circle", top_k=5)         # ITC, then ITM re-ranking of the top k
    predictor.caption(["a.jpg"], max_len=30, beam=3)       # captions from the causal decoder

Images are paths, bytes (any format Pillow reads) or PIL images; they go through the data
pipeline's evaluation-mode steps, as evaluation reads its shards: the whole image resized to
the model's resolution (data_pipeline.transforms.evaluation.whole_image), uint8 pixels that
the vision tower normalises; texts are cleaned and tokenised by data_pipeline.text.TextEncoder
with the folder's tokenizer (text length from the card's training data, else the data spec's
default). The model calls are the evaluator's (`encode_image`, `encode_text`, `itm_score`,
`predict_box`), so scores and boxes equal x2vlm-eval's for the same inputs. Everything is
batched (`batch_size`); on a GPU under bf16 autocast unless `precision="fp32"`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from data_pipeline.config import ConfigError, build
from data_pipeline.io.tar_stream import DEFAULT_MAX_MEMBER_BYTES
from data_pipeline.media.image_decode import open_image, to_uint8_pixels
from data_pipeline.skips import BadSample
from data_pipeline.spec import TextSpec
from data_pipeline.text import TextEncoder
from data_pipeline.transforms.evaluation import whole_image
from training.model import TextEncoding, VisionEncoding
from training.folders.model_folder import CARD_FILE, ModelFolderError, load_model_folder
from training.inference.precisions import DTYPE_NAMES

ImageInput = Union[str, os.PathLike, bytes, Image.Image]
PRECISIONS = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}
# Modes a PNG stores as they are; others (CMYK, YCbCr, ...) are converted to RGB first.
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")


class InputError(ValueError):
    """An image or text the model cannot take; the message names it."""


@dataclasses.dataclass(frozen=True)
class Box:
    """A box in the pixels of the image as given: (x, y) its top-left corner, clipped to the image."""

    x: float
    y: float
    w: float
    h: float
    # As the box head predicts it: (cx, cy, w, h) as fractions of the image's width and height.
    relative: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Ranked:
    index: int  # position in the images given
    itc: float  # cosine similarity of the image's and the text's embeddings
    itm: float | None  # ITM probability, for the candidates that were re-ranked


def _describe(image, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"image {index} ({type(image).__name__})"


def image_bytes(image: ImageInput, index: int = 0) -> bytes:
    """The encoded image: a file's bytes, the bytes given, or a PIL image written as PNG
    (lossless), so that every image takes the one decoding path."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"{path}: not a file")
        # At most the loader's member cap: a huge file (a sparse 20 GB one) is no image, and
        # reading it whole would take the machine's memory first.
        with path.open("rb") as file:
            data = file.read(DEFAULT_MAX_MEMBER_BYTES + 1)
        if len(data) > DEFAULT_MAX_MEMBER_BYTES:
            raise InputError(f"{path}: larger than {DEFAULT_MAX_MEMBER_BYTES >> 20} MiB; not an image to read")
        return data
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, Image.Image):
        if image.mode not in _PNG_MODES:
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise InputError(f"image {index}: expected a path, bytes or a PIL image, got {type(image).__name__}")


def _chunks(count: int, size: int):
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


class X2VLMPredictor:
    def __init__(self, folder: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 32,
                 precision: str | None = None, max_tokens: int | None = None, max_words: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loaded = load_model_folder(folder)
        self.folder, self.card, self.tokenizer = loaded.path, loaded.card, loaded.tokenizer
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = precision or ("bf16" if self.device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.dtype = PRECISIONS[precision]
        self.model = loaded.model.to(self.device).eval()
        self.batch_size = batch_size
        self.image_size = loaded.config.vision.image_size
        # The text settings the model was trained with, where its card says them.
        trained = ((self.card.data or {}).get("text") or {})
        if not isinstance(trained, dict):
            raise ModelFolderError(f"{self.folder / CARD_FILE}: data.text: expected a mapping, got {trained!r}")
        settings = {"tokenizer": str(self.tokenizer), "max_tokens": max_tokens or trained.get("max_tokens"),
                    "max_words": max_words or trained.get("max_words")}
        where = f"{self.folder / CARD_FILE}: data.text"  # the card's values, or the arguments that replace them
        try:
            spec = build(TextSpec, {k: v for k, v in settings.items() if v is not None}, where)
        except ConfigError as error:
            raise ModelFolderError(str(error)) from None
        positions = loaded.config.text.token_positions
        if spec.max_tokens > positions:  # and a card that says 10^9 would pad every text to it
            raise ModelFolderError(f"{where}.max_tokens: {spec.max_tokens} exceeds the model's {positions} text "
                                   f"positions (text.max_position_embeddings)")
        self.text = TextEncoder(spec)
        self._rng = random.Random(0)  # the encoder also draws MLM masks, which inference does not use

    # Preprocessing ----------------------------------------------------------------------------

    def pixels(self, images: Sequence[ImageInput], first: int = 0, skipped: list[tuple[int, str]] | None = None
               ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """uint8 (N, 3, S, S) pixels and each image's (width, height); FIRST numbers them in
        messages. An image that cannot be read raises InputError, or with SKIPPED (a list) is
        left out and appended to it as (its number, why)."""
        arrays, sizes = [], []
        for i, image in enumerate(images, start=first):
            try:
                encoded = open_image(image_bytes(image, i))
                arrays.append(to_uint8_pixels(whole_image(encoded, self.image_size)))
            except (BadSample, InputError) as bad:
                message = f"{_describe(image, i)}: not a readable image ({bad})" if isinstance(bad, BadSample) else str(bad)
                if skipped is None:
                    raise InputError(message) from None
                skipped.append((i, message))
                continue
            sizes.append(encoded.size)
        if not arrays:
            return torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8), sizes
        # Stacked as the loader's collate stacks them (channels-last memory), so that the vision
        # tower sees what it sees in evaluation.
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), sizes

    def tokens(self, texts: Sequence[str], first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_ids, text_mask), each (N, max_tokens)."""
        ids, masks = [], []
        for i, text in enumerate(texts, start=first):
            if not isinstance(text, str):
                raise InputError(f"text {i}: expected a string, got {type(text).__name__}")
            try:
                encoded = self.text.encode(text, self._rng)
            except BadSample as bad:
                raise InputError(f"text {i} {text!r}: {bad}") from None
            ids.append(encoded["text_ids"])
            masks.append(encoded["text_mask"])
        return torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(masks))

    # Model calls ------------------------------------------------------------------------------

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _encode_images(self, images: Sequence[ImageInput], first: int,
                       skipped: list[tuple[int, str]] | None = None) -> tuple[VisionEncoding | None, list]:
        pixels, sizes = self.pixels(images, first, skipped)
        if not len(pixels):
            return None, sizes
        with self._autocast():
            return self.model.encode_image(pixels.to(self.device)), sizes

    def _encode_texts(self, texts: Sequence[str], first: int) -> TextEncoding:
        ids, mask = self.tokens(texts, first)
        with self._autocast():
            return self.model.encode_text(ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageInput], skipped: list[tuple[int, str]] | None = None) -> torch.Tensor:
        """(N, embed_dim) float32 on the CPU, unit length: the ITC embeddings. With SKIPPED (a
        list), the images that cannot be read are left out of N and appended to it as (their
        number, why); without, the first of them raises InputError."""
        images = _as_list(images)
        encoded = [self._encode_images(images[s], s.start, skipped)[0] for s in _chunks(len(images), self.batch_size)]
        features = [vision.features.float().cpu() for vision in encoded if vision is not None]
        return torch.cat(features) if features else torch.empty(0)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, embed_dim) float32 on the CPU, unit length: the ITC embeddings."""
        texts = _as_list(texts)
        return torch.cat([self._encode_texts(texts[s], s.start).features.float().cpu()
                          for s in _chunks(len(texts), self.batch_size)]) if texts else torch.empty(0)

    @torch.no_grad()
    def score(self, images: Sequence[ImageInput] | ImageInput, texts: Sequence[str] | str) -> torch.Tensor:
        """(N,) ITM probability that image i matches text i; one image (or one text) is paired
        with each of the other side."""
        images, texts = _pairs(images, texts)
        scores = []
        for s in _chunks(len(images), self.batch_size):
            vision, _ = self._encode_images(images[s], s.start)
            text = self._encode_texts(texts[s], s.start)
            with self._autocast():
                scores.append(self.model.itm_score(vision, text).float().cpu())
        return torch.cat(scores) if scores else torch.empty(0)

    @torch.no_grad()
    def ground_batch(self, images: Sequence[ImageInput] | ImageInput, texts: Sequence[str] | str) -> list[Box]:
        """The box of what text i describes in image i (paired as in `score`)."""
        images, texts = _pairs(images, texts)
        boxes = []
        for s in _chunks(len(images), self.batch_size):
            vision, sizes = self._encode_images(images[s], s.start)
            text = self._encode_texts(texts[s], s.start)
            with self._autocast():
                predicted = self.model.predict_box(vision.tokens, text).float().cpu()
            boxes += [_pixel_box(box, size) for box, size in zip(predicted.tolist(), sizes)]
        return boxes

    def ground(self, image: ImageInput, text: str) -> Box:
        """The box of what TEXT describes in IMAGE, in IMAGE's pixels."""
        return self.ground_batch([image], [text])[0]

    @torch.no_grad()
    def caption(self, images: Sequence[ImageInput] | ImageInput, max_len: int = 30, beam: int = 1,
                prompt: str = "", length_penalty: float = 1.0) -> list[str]:
        """A caption of each image from the causal decoder (training/model/generation.py): greedy
        with ``beam=1``, else beam search; at most ``max_len`` tokens after PROMPT, which starts
        every caption (e.g. "a picture of") and is left out of the result. Meaningful for a
        model trained with the captioning loss (losses.weights.image.lm)."""
        from training.model.generation import generate, special_ids

        images = _as_list(images)
        prompt_ids = self.text.backend.encode(prompt, add_special_tokens=False).ids if prompt.strip() else []
        room = self.model.config.text.max_position_embeddings - 1 - len(prompt_ids)
        if not 1 <= max_len <= room:
            raise InputError(f"max_len {max_len}: must lie between 1 and {room} (the model's positions, less the prompt)")
        if beam < 1:
            raise InputError(f"beam {beam}: must be >= 1")
        captions = []
        for s in _chunks(len(images), self.batch_size):
            vision, _ = self._encode_images(images[s], s.start)
            try:
                with self._autocast():
                    ids = generate(self.model, vision, max_len=max_len, beam=beam, prompt=prompt_ids,
                                   length_penalty=length_penalty, **special_ids(self.text))
            except ValueError as error:  # a beam width the vocabulary cannot fill
                raise InputError(str(error)) from None
            captions += [self.text.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        return captions

    def rank(self, images: Sequence[ImageInput], query: str, top_k: int = 10, itm_top_k: int = 16,
             skipped: list[tuple[int, str]] | None = None) -> list[Ranked]:
        """The TOP_K images that best match QUERY, best first, as x2vlm-eval ranks: by ITC
        similarity, then the first ITM_TOP_K of those re-ranked by ITM probability ahead of the
        rest (0: ITC only). With SKIPPED (a list), images that cannot be read are left out of the
        ranking and appended to it as (their number, why); without, the first raises InputError."""
        images = _as_list(images)
        if not images:
            return []
        text = self.embed_texts([query])[0]  # before the images: a bad query fails at once
        before = len(skipped) if skipped is not None else 0
        embeddings = self.embed_images(images, skipped)
        similarities = (embeddings @ text).tolist() if len(embeddings) else []
        left_out = {i for i, _ in skipped[before:]} if skipped is not None else set()
        readable = [i for i in range(len(images)) if i not in left_out]
        itc = dict(zip(readable, similarities))
        order = sorted(readable, key=lambda i: (-itc[i], i))
        candidates = order[:max(itm_top_k, 0)]
        itm = dict(zip(candidates, self.score([images[i] for i in candidates], query).tolist())) if candidates else {}
        reranked = sorted(candidates, key=lambda i: (-itm[i], i)) + order[len(candidates):]
        return [Ranked(i, itc[i], itm.get(i)) for i in reranked[:top_k]]


def _as_list(values) -> list:
    return [values] if isinstance(values, (str, bytes, os.PathLike, Image.Image)) else list(values)


def _pairs(images, texts) -> tuple[list, list[str]]:
    images, texts = _as_list(images), _as_list(texts)
    if len(images) == 1 and len(texts) > 1:
        images = images * len(texts)
    elif len(texts) == 1 and len(images) > 1:
        texts = texts * len(images)
    if len(images) != len(texts):
        raise InputError(f"{len(images)} images and {len(texts)} texts: give as many of each, or one of either")
    return images, texts


def _pixel_box(relative: list[float], size: tuple[int, int]) -> Box:
    """A normalised (cx, cy, w, h) box of the whole image (resized to a square for the model)
    in the pixels of the image as given, clipped to it."""
    cx, cy, w, h = relative
    width, height = size
    x0, x1 = max(0.0, (cx - w / 2) * width), min(float(width), (cx + w / 2) * width)
    y0, y1 = max(0.0, (cy - h / 2) * height), min(float(height), (cy + h / 2) * height)
    return Box(x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0), (cx, cy, w, h))
