"""Image loading and transforms (MANME.md §5, training recipe): pad to a white square, resize, crop, normalise.

CLIP towers use their own style (ImageStyle): CLIP4Cir's target padding (black, only beyond a long/short side
ratio), a bicubic resize of the short side and a centre crop to the input size, CLIP's mean and std.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torchvision import transforms

WHITE = (255, 255, 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# open_clip's OPENAI_DATASET_MEAN / _STD, the normalisation of every CLIP tower here (tests/test_clip.py checks)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageStyle:
    """How an image file becomes the model's input. `pad` "square": a white square resized to
    resize_size(crop), then a random (training) or centre crop (ARTEMIS). "targetpad" (CLIP towers, CLIP4Cir):
    black padding of the short side up to a long/short ratio of `ratio`, bicubic resize of the short side to
    the crop size, centre crop; the prepared pixels are then the crop itself, and training uses them as they
    are (no flip, as CLIP4Cir trains): the model's input of an image is the same at every epoch."""
    pad: str = "square"
    ratio: float = 1.25
    flip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def prepared_size(self, crop: int) -> int:
        """The side of the prepared pixels (what the cache stores) for a crop of `crop`."""
        return resize_size(crop) if self.pad == "square" else crop

    @property
    def cache_tag(self) -> str:
        """What the cache's file names add for this style ("" for the default: older caches stay valid)."""
        return "" if self.pad == "square" else f"-targetpad{round(self.ratio * 100)}"


IMAGENET = ImageStyle()


def clip_style(ratio: float) -> ImageStyle:
    return ImageStyle("targetpad", ratio, False, CLIP_MEAN, CLIP_STD)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":  # palette images may carry transparency: go through RGBA
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, WHITE)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16/32-bit grayscale: convert("RGB") would clip to 255, so rescale first.
        values = np.asarray(image, dtype=np.float32)
        if values.max() > 255:
            values = values / 257.0
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def pad_to_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def load_image(path: str | Path, upright: bool = False, draft: int | None = None,
               square: bool = True) -> Image.Image:
    """The image as an RGB square (as it is with square=False); a missing, empty or corrupt file raises naming it.

    `upright` applies the EXIF orientation tag (a phone photo taken sideways): for a user's own
    images. Dataset images are read as the published pipelines read them, tag ignored.
    `draft` (--jpeg_draft): a JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale whose square is
    still at least `draft` px, which the resize to that size then needs; other formats as ever."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty image file (0 bytes); re-download it "
                         f"(`python -m data.check` lists every such file)")
    try:
        with Image.open(path) as image:
            if draft and image.format == "JPEG":
                width, height = image.size
                side = max(width, height)
                image.draft("RGB", (math.ceil(width * draft / side), math.ceil(height * draft / side)))
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image) if upright else image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e}); re-download it "
                         f"(`python -m data.check` lists every such file)") from None
    return pad_to_square(rgb) if square else rgb


def target_pad(image: Image.Image, ratio: float) -> Image.Image:
    """CLIP4Cir's target padding: when long/short side exceeds `ratio`, pad the short side with black, equally
    on both sides, until the ratio is about `ratio`; else the image as it is."""
    w, h = image.size
    if max(w, h) / min(w, h) < ratio:
        return image
    short = max(w, h) / ratio
    horizontal, vertical = max(int((short - w) / 2), 0), max(int((short - h) / 2), 0)
    canvas = Image.new("RGB", (w + 2 * horizontal, h + 2 * vertical), (0, 0, 0))
    canvas.paste(image, (horizontal, vertical))
    return canvas


def clip_pixels(image: Image.Image, size: int, ratio: float) -> np.ndarray:
    """Target padding, bicubic resize of the short side to `size`, centre crop: (size, size, 3) uint8."""
    image = transforms.functional.resize(target_pad(image, ratio), size,
                                         interpolation=transforms.InterpolationMode.BICUBIC)
    return np.array(transforms.functional.center_crop(image, [size, size]), dtype=np.uint8)


def resize_size(crop_size: int) -> int:
    """The square side images are resized to before a crop of crop_size (256 for 224)."""
    return round(crop_size * 256 / 224)


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """A square RGB image resized to size x size as transforms.Resize(size) does (bilinear, antialiased):
    (size, size, 3) uint8, the prepared pixels data.augment crops from and data.prepare caches."""
    return np.array(transforms.functional.resize(image, [size, size]), dtype=np.uint8)


def prepared_pixels(path: str | Path, size: int, upright: bool = False, draft: bool = False,
                    style: ImageStyle = IMAGENET) -> np.ndarray:
    """The deterministic part of the transform from the file: load_image (RGB, white square), then resize.
    `draft` decodes JPEGs at a reduced scale first (faster; pixels differ slightly, see load_image).
    A targetpad `style`: clip_pixels instead (no draft decoding)."""
    if style.pad == "targetpad":
        return clip_pixels(load_image(path, upright, square=False), size, style.ratio)
    return resize_square(load_image(path, upright, size if draft else None), size)


# The per-image torchvision form of the transform. Training and evaluation run the same steps on
# whole batches (data.augment), which tests/test_cache.py checks equal to these bit for bit.
def train_transform(crop_size: int = 224):
    return transforms.Compose([
        transforms.Resize(resize_size(crop_size)),
        transforms.RandomCrop(crop_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(crop_size: int = 224):
    return transforms.Compose([
        transforms.Resize(resize_size(crop_size)),
        transforms.CenterCrop(crop_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
