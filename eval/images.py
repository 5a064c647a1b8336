"""PIL frames -> float tensors, the one conversion every metric uses.

Shapes: B frames, 3 x S x S pixels in [0, 1].
"""
import numpy as np
import torch
from PIL import Image


def resize_square(image, size):
    """Resize to size x size (bicubic, PIL's antialiasing), the convention of the 64 px FID literature."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.BICUBIC)


def to_tensor(images, size=None):
    """(B, 3, H, W) float in [0, 1]; frames of different sizes need `size` (resized square)."""
    if size is not None:
        images = [resize_square(image, size) for image in images]
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def batches(items, batch_size):
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


class LazyFrames:
    """A sequence of frames (root, relative path) loaded when indexed, so a test split of thousands
    of 512 px frames never sits in memory at once; slicing returns a list of PIL images."""

    def __init__(self, entries):
        self.entries = list(entries)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        from eval.stories_io import load_frame
        if isinstance(index, slice):
            return [load_frame(root, path) for root, path in self.entries[index]]
        root, path = self.entries[index]
        return load_frame(root, path)
