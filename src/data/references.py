"""Character reference images for Char-LDM (StoryGPT-V §3.1; docs/storygpt_v.md, "Stage 1").

Training: each character's reference is cut from the same frame (the box of its visible mask), padded
to a square and resized to the image encoder's input; `augment_references` (run by the task, on the
device, from the global RNG so that a resumed run repeats it) then replaces the background with noise
and augments. Inference: one fixed image per character, `meta.json`'s `reference` (`chars/`).

Shapes: M characters per frame, H×W frame, R the image encoder's input size; pixels in [0,1].
  frame [3,H,W] in [-1,1], mask [H,W] -> crop [3,R,R], crop_mask [1,R,R]
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src.data.transforms import load_frame


def _pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """[C,h,w] -> [C,s,s], s = max(h, w), zero-padded evenly (content centred)."""
    h, w = image.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(image, (left, side - w - left, top, side - h - top))


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def crop_reference(frame: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The character's visible box, square-padded and resized. An empty mask gives zeros."""
    if mask.sum() == 0:
        return torch.zeros(3, size, size), torch.zeros(1, size, size)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    crop = (frame[:, y0:y1, x0:x1] + 1) / 2
    crop_mask = mask[None, y0:y1, x0:x1].float()
    return (_resize(_pad_to_square(crop), size).clamp(0, 1),
            (_resize(_pad_to_square(crop_mask), size) > 0.5).float())


def _release_pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """The released code's PadToSquare (models/transforms.py): (long - short) // 2 zeros on *both* sides,
    so an odd difference leaves the image one pixel short of square (the resize then stretches it)."""
    h, w = image.shape[-2:]
    if h > w:
        return F.pad(image, ((h - w) // 2, (h - w) // 2, 0, 0))
    return F.pad(image, (0, 0, (w - h) // 2, (w - h) // 2))


def load_reference(path: Path, size: int, mode: str = "ours") -> torch.Tensor:
    """A fixed reference image -> [3,R,R] in [0,1] (square-padded, resized).

    mode "ours": an exact square, resized in floats. "release" (models/transforms.py get_object_transforms
    with --no_object_augmentation, as evaluation runs it): the release's padding, the 8-bit image resized
    (bilinear, antialiased) and rounded back to 8 bits, then / 255."""
    image = load_frame(path, None)  # [-1,1], own size
    if mode == "ours":
        return _resize(_pad_to_square((image + 1) / 2), size).clamp(0, 1)
    if mode != "release":
        raise ValueError(f"reference preprocessing '{mode}' is not one of ours, release")
    levels = ((image + 1) * 127.5).round()  # the stored 8-bit values, exactly
    return _resize(_release_pad_to_square(levels), size).round().clamp(0, 255) / 255


def reference_from_image(image, size: int) -> torch.Tensor:
    """A user's reference (a path, a PIL image of any size and mode, or a [3,H,W] tensor in [0,1]) ->
    [3,R,R] in [0,1], prepared as the dataset's fixed references are. Transparency is composited on
    white (a cut-out character keeps its outline, not a black box)."""
    if isinstance(image, (str, Path)):
        return load_reference(Path(image), size)
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"a reference tensor must be [3,H,W] in [0,1], got shape {tuple(image.shape)}")
        pixels = image.float()
    else:
        from PIL import Image

        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(array).permute(2, 0, 1)
    return _resize(_pad_to_square(pixels), size).clamp(0, 1)


def _affine(images: torch.Tensor, rotate: float, scale: tuple[float, float], translate: float,
            flip: float) -> torch.Tensor:
    """One random rotation / zoom / shift / horizontal flip per image; [N,C,R,R] -> same."""
    n = images.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(rotate)
    zoom = scale[0] + torch.rand(n) * (scale[1] - scale[0])
    shift = (torch.rand(n, 2) * 2 - 1) * translate
    mirror = torch.where(torch.rand(n) < flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                         torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0], device=images.device, dtype=images.dtype)
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    weight = kernel.expand(images.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), weight, groups=images.shape[1])


def augment_references(pixels: torch.Tensor, masks: torch.Tensor, rotate: float = 30.0,
                       scale: tuple[float, float] = (0.8, 1.2), translate: float = 0.1, flip: float = 0.5,
                       jitter: float = 0.2, gray: float = 0.1, blur: float = 0.1) -> torch.Tensor:
    """[N,3,R,R] crops and [N,1,R,R] masks -> augmented references whose background is uniform noise.
    jitter scales brightness / contrast / saturation by up to ±jitter; gray and blur are probabilities."""
    n = pixels.shape[0]
    if n == 0:
        return pixels
    both = _affine(torch.cat([pixels, masks], 1), rotate, tuple(scale), translate, flip)
    pixels, masks = both[:, :3], (both[:, 3:] > 0.5).to(pixels.dtype)

    def factor():
        return (1 + (torch.rand(n, 1, 1, 1) * 2 - 1) * jitter).to(pixels)
    pixels = pixels * factor()
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = (pixels - mean) * factor() + mean
    luma = (0.299 * pixels[:, :1] + 0.587 * pixels[:, 1:2] + 0.114 * pixels[:, 2:])
    pixels = (pixels - luma) * factor() + luma
    to_gray = (torch.rand(n, 1, 1, 1) < gray).to(pixels)
    pixels = pixels * (1 - to_gray) + luma.expand_as(pixels) * to_gray
    to_blur = (torch.rand(n, 1, 1, 1) < blur).to(pixels)
    pixels = pixels * (1 - to_blur) + _blur(pixels) * to_blur
    noise = torch.rand(pixels.shape).to(pixels)
    return (pixels * masks + noise * (1 - masks)).clamp(0, 1)


def noise_background(pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """No augmentation, only the noise background (what an un-augmented training reference looks like)."""
    return pixels * masks + torch.rand(pixels.shape).to(pixels) * (1 - masks)


def fixed_references(root, meta: dict, size: int, mode: str = "ours") -> dict[str, torch.Tensor]:
    """{character name: [3,R,R]} for every character whose meta.json entry has a `reference`
    (`mode`: load_reference's)."""
    refs = {}
    for character in meta["characters"]:
        if character.get("reference"):
            path = Path(root) / character["reference"]
            if not path.is_file():
                raise FileNotFoundError(f"{Path(root) / 'meta.json'}: reference of '{character['name']}' "
                                        f"not found: {path}")
            refs[character["name"]] = load_reference(path, size, mode)
    return refs
