"""Frame and mask loading: files on disk <-> tensors.

Every dataset reads a story's files through `story_file` (frames: `story_frame`), so a missing or
unreadable image or mask is one error naming the story line that referenced it, its id, the frame and the
file (`train.jsonl:17: field 'images': story 's16' frame 2: .../f2.png: cannot read image: ...`), however
late in a run the frame is first read.

Shapes: H height, W width. Frames are FloatTensor [3, H, W] in [-1, 1] (the range the diffusion VAE
expects); masks are LongTensor [H, W] label maps (0 background, i + 1 the i-th character of the frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image

from src.data.stories import Story, StoryFormatError, resolve

T = TypeVar("T")


class ImageFileError(StoryFormatError):
    """An image or mask file that cannot be decoded or does not hold what it must; names the file.
    `story_file` turns it into an error naming the story line that referenced the file."""


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _open(path, decode: bool = True) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        if decode:
            image.load()  # decode now so a truncated file fails here, naming the file
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageFileError(path, None, None, f"cannot read image: {err}") from None
    return image


def image_size(path) -> tuple[int, int]:
    """(height, width) of a stored image, from its header alone (no decoding)."""
    with _open(path, decode=False) as image:
        return image.height, image.width


def load_frame(path, size) -> torch.Tensor:
    """RGB frame as FloatTensor [3, H, W] in [-1, 1]; `size` is an int, (height, width), or None for
    the stored size.

    A frame stored at another size is resized with PIL's bicubic filter, which is antialiased when it
    shrinks (no aliasing on the 512 -> 64 px downscale of real datasets)."""
    image = _open(path).convert("RGB")
    height, width = (image.height, image.width) if size is None else _size_hw(size)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def load_mask(path, size) -> torch.Tensor:
    """Label-map mask as LongTensor [H, W]; resized with nearest so labels stay labels."""
    height, width = _size_hw(size)
    image = _open(path)
    if image.mode not in ("L", "P"):
        raise ImageFileError(path, None, None,
                             f"a mask must be an 8-bit single-channel PNG (mode L), got mode {image.mode}")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(image, dtype=np.int64).copy())


def story_file(root, story: Story, key: str, k: int, read: Callable[[Path], T]) -> T:
    """`read(path)` of frame k's file in `story`'s list `key` (images | masks), resolved under the dataset
    folder `root`. A missing file, or one `read` finds unreadable (ImageFileError), is a StoryFormatError
    naming the story's file and line, the field, the story id, the frame and the file."""
    path = resolve(root, getattr(story, key)[k])
    try:
        return read(path)
    except FileNotFoundError:
        problem = f"missing file {path}"  # as read_stories(check_files=True) words it
    except ImageFileError as err:
        problem = str(err)  # "<file>: cannot read image: <why>"
    raise StoryFormatError(story.source or path, story.line, key, f"story '{story.id}' frame {k}: {problem}")


def story_frame(root, story: Story, k: int, size) -> torch.Tensor:
    """load_frame of `story`'s frame k (story_file: a bad file names the story line)."""
    return story_file(root, story, "images", k, lambda path: load_frame(path, size))


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of load_frame: [3, H, W] (or [1, H, W]) in [-1, 1] -> RGB (or L) PIL image."""
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"to_pil expects a [3, H, W] or [1, H, W] tensor, got shape {tuple(tensor.shape)}")
    array = tensor.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0])
    return Image.fromarray(array)


def pil_bicubic_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,H,W] frames in [-1,1] (8-bit images) -> [N,3,size,size] in [0,1] the way CLIP's image processor
    prepares a PIL image (transformers' CLIPImageProcessor with PIL, as StoryGPT-V's stage 2 ran it):
    the shorter side resized to `size` with PIL's bicubic filter (the longer side int(size * long / short)),
    then the centre `size` x `size` crop, / 255."""
    out = []
    for frame in frames:
        levels = ((frame.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        image = Image.fromarray(levels.permute(1, 2, 0).numpy())
        width, height = image.size
        short, long = min(width, height), max(width, height)
        resized = (size, int(size * long / short)) if width <= height else (int(size * long / short), size)
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255)
    return torch.stack(out).to(frames.device)
