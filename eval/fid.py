"""Frechet distance between two sets of features (FID when the features are Inception pool3).

Shapes: N frames, D feature width.

FID (Heusel et al. 2017): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The matrix square
root's trace is taken as the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a
symmetric positive semi-definite matrix, so no scipy and no complex parts to discard. Every generated
frame is paired with its own ground-truth frame (same story id, same index): the real set is fixed,
never a random frame per clip as in the StoryGPT-V and ARLDM scripts.
"""
import numpy as np
import torch

from eval.images import batches, resize_square, to_tensor


def _psd_sqrt(matrix):
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(features_a, features_b):
    """Frechet distance between Gaussians fitted to two (N, D) feature arrays (float64)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: need two (N, D) arrays of equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: need at least 2 frames per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sqrt_a = _psd_sqrt(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    return max(value, 0.0)


@torch.no_grad()
def extract_features(feature_fn, images, batch_size, device, resize_to=None, input_size=None):
    """(N, D) numpy features of PIL images.

    resize_to: protocol option, both sets resized to resize_to x resize_to first (64 px literature).
    input_size: the feature network's own input size (frames are resized square to it), or None
    when the network resizes itself (Inception -> 299).
    """
    outputs = []
    for chunk in batches(images, batch_size):
        if resize_to is not None:
            chunk = [resize_square(image, resize_to) for image in chunk]
        if input_size is None and len({image.size for image in chunk}) > 1:
            # frames of mixed sizes go one by one; the network resizes each itself
            for image in chunk:
                outputs.append(feature_fn(to_tensor([image]).to(device)).float().cpu().numpy())
            continue
        pixels = to_tensor(chunk, size=input_size).to(device)
        outputs.append(feature_fn(pixels).float().cpu().numpy())
    return np.concatenate(outputs, axis=0)
