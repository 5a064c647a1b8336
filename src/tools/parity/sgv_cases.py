"""The inputs of the StoryGPT-V parity checks: captions, stories, images and seeds (no code of either side).

The captions cover what tells the two name-token rules apart: punctuation attached to a name ("Barney.",
"Fred's", "Fred,"), the two-word "mr slate" (and "Mr. Slate"), upper case, more than four names, a name
twice, double spaces and a caption longer than CLIP's 77 tokens; the PororoSV ones add the alias
"Tong Tong".
"""
from __future__ import annotations

import numpy as np
import torch

from src.tools.parity.sgv_tiny import FLINTSTONES

IMAGE_TOKEN = "<|image|>"   # the release's name marker (models/data.py)
# The training path is compared on frames with at most 4 annotated characters: with more, the release keeps
# a random 4 (ImageDataset.preprocess) and ours the first 4; such captions get an unmarked row on both sides.
TRAINING_MAX = 4

# (caption, the frame's annotated characters); the annotation decides the training path's segments.
FLINTSTONES_CAPTIONS = [
    ("Fred is talking to Barney.", ["fred", "barney"]),
    ("Fred's car is parked outside the house.", ["fred"]),
    ("Mr Slate yells at Fred in the quarry.", ["mr slate", "fred"]),
    ("Mr. Slate talks to Fred and Barney about work", ["mr slate", "fred", "barney"]),
    ("Wilma and Betty are laughing in the living room", ["wilma", "betty"]),
    ("Barney, Fred and Dino run across the yard.", ["barney", "fred", "dino"]),
    ("Pebbles plays with Dino while Wilma watches Pebbles", ["pebbles", "dino", "wilma"]),
    ("fred wilma barney betty pebbles dino are all here", ["fred", "wilma", "barney", "betty", "pebbles", "dino"]),
    ("The room is empty and quiet.", []),
    ("Fred  is standing in the  doorway.", ["fred"]),
    ("Betty is reading a book. Wilma enters the room.", ["betty", "wilma"]),
    ("FRED shouts at BARNEY loudly", ["fred", "barney"]),
    ("Dino is licking Fred's face in the yard.", ["dino", "fred"]),
    ("Fred, Wilma, Barney, Betty and Pebbles are at dinner.", ["fred", "wilma", "barney", "betty", "pebbles"]),
    ("Wilma is in the kitchen. she is cooking dinner for Fred", ["wilma", "fred"]),
    ("Barney drives the car while Betty sits next to him and Fred waves from the porch of the stone house "
     "as the sun sets over Bedrock and the birds fly home over the hills and the river and the quarry where "
     "Fred works every day with Barney", ["barney", "betty", "fred"]),
    ("Dino", ["dino"]),
    ("Betty talks to Wilma. Betty laughs.", ["betty", "wilma"]),
]
PORORO_CAPTIONS = [
    ("Pororo and Crong are playing in the snow.", ["Pororo", "Crong"]),
    ("Loopy is baking cookies for Eddy", ["Loopy", "Eddy"]),
    ("Poby says hello to Petty.", ["Poby", "Petty"]),
    ("Tong Tong flies over the house", ["Tongtong"]),
    ("Rody and Harry are talking with Pororo's friend.", ["Rody", "Harry"]),
    ("Everyone is sleeping.", []),
]

# A 3-frame FlintstonesSV story: the release rewrites frame 2's caption to "She is smiling." (its
# co-reference rule; frame 2's characters equal frame 1's), a pronoun frame for stage 2.
STORY = [("Fred talks to Barney in the yard.", ["fred", "barney"]),
         ("Wilma is cooking in the kitchen.", ["wilma"]),
         ("Wilma is smiling.", ["wilma"])]
FILLER = "Someone is here."

# Reference images: odd and even size differences both ways (the release pads (long - short) // 2 a side).
REFERENCE_SIZES = {"fred": (100, 37), "barney": (37, 100), "wilma": (64, 64), "betty": (81, 50),
                   "pebbles": (50, 81), "dino": (45, 46), "mr slate": (90, 60)}

STEPS, GUIDANCE = 6, 5.0        # the e2e samples: PNDM, classifier-free guidance as the release (>1 required)
RELEASE_MERGE_STEP = 2          # the release's --start_merge_step (text-only for steps i <= 2)
SEED = 0


def reference_images(seed: int = SEED) -> dict[str, np.ndarray]:
    """{name: uint8 [H,W,3]}: smooth colour blobs on a noisy background, one per FlintstonesSV character."""
    rng = np.random.default_rng(seed)
    images = {}
    for name in FLINTSTONES:
        h, w = REFERENCE_SIZES[name]
        yy, xx = np.mgrid[0:h, 0:w]
        colour = rng.integers(30, 225, size=3)
        blob = np.exp(-(((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2))[..., None]
        noise = rng.integers(0, 256, size=(h, w, 3))
        images[name] = (blob * colour + (1 - blob) * noise).round().clip(0, 255).astype(np.uint8)
    return images


def upsample(levels: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """uint8 [...,3,h,w] -> float [...,3,h*f,w*f] in [0,1] by repetition: exact, so the golden files keep
    the small images."""
    return levels.float().repeat_interleave(factor, -1).repeat_interleave(factor, -2) / 255
