"""Long toy stories for SEED-Story's stage 2: StoryStream-shaped stories of many beats (30 by default)
whose text follows the characters from beat to beat, cut into chunks of 10 as StoryStream is for
training (docs/seed_story.md, "Data"; src/data/convert/storystream.py cuts real stories the same way).

How a long story unfolds, so that the next beat is largely predictable from the story so far:
- a cast of 2 or 3 characters, all on screen in the first beat;
- scenes of 3 or 4 beats; each new scene moves the cast to the next place in a fixed cycle
  (beach -> forest -> city -> night -> beach ...), with the whole cast on screen again;
- within a scene, a beat keeps the same characters, or one cast member leaves or comes back.
Every caption names exactly the characters on screen and the place, and says how the beat follows the
previous one ("Cleo joined Ada and Bob in the city.", "Only Ada stayed in the city.").
"""
from __future__ import annotations

import numpy as np

from src.data.toy_sprites import BACKGROUNDS, CHARACTERS

CAST_SIZES, CAST_WEIGHTS = (2, 3), (0.5, 0.5)
SCENE_LENGTHS = (3, 4)
P_SAME_GROUP = 0.5       # within a scene: the same characters again; else one leaves or comes back
GOES = {"beach": "went to the beach", "forest": "went into the forest", "city": "went to the city",
        "night": "stayed out at night"}
AT = {"beach": "on the beach", "forest": "in the forest", "city": "in the city", "night": "at night"}
STAY_VERBS = ("walked", "played", "waited", "rested", "danced", "looked around")


def name_phrase(names: list[str]) -> str:
    """'Ada', 'Ada and Bob', 'Ada, Bob and Cleo' (both kinds of toy caption)."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def plan_long_story(rng: np.random.Generator, frames: int) -> tuple[list[list[str]], list[str], list[str]]:
    """Characters, background and caption of every beat."""
    names = [c.name for c in CHARACTERS]
    cast_size = int(rng.choice(CAST_SIZES, p=CAST_WEIGHTS))
    cast = [names[i] for i in sorted(rng.choice(len(names), size=cast_size, replace=False))]
    place = int(rng.integers(len(BACKGROUNDS)))
    characters, backgrounds, captions = [], [], []
    scene_left = 0
    for k in range(frames):
        if scene_left == 0:  # a new scene: the whole cast, the next place of the cycle
            if k > 0:
                place = (place + 1) % len(BACKGROUNDS)
            scene_left = int(rng.choice(SCENE_LENGTHS))
            on_screen = list(cast)
            loc = BACKGROUNDS[place]
            captions.append(f"{name_phrase(on_screen)} {'were ' + AT[loc] if k == 0 else GOES[loc]}.")
        else:
            previous, loc = characters[-1], BACKGROUNDS[place]
            away = [n for n in cast if n not in previous]
            leave = len(previous) > 1 and (not away or rng.random() < 0.5)
            if rng.random() < P_SAME_GROUP or (not away and not leave):
                on_screen = list(previous)
                verb = STAY_VERBS[rng.integers(len(STAY_VERBS))]
                captions.append(f"{name_phrase(on_screen)} {verb} {AT[loc]}.")
            elif leave:
                gone = previous[int(rng.integers(len(previous)))]
                on_screen = [n for n in previous if n != gone]
                captions.append(f"Only {name_phrase(on_screen)} stayed {AT[loc]}.")
            else:
                back = away[int(rng.integers(len(away)))]
                on_screen = [n for n in cast if n in previous or n == back]
                captions.append(f"{back} joined {name_phrase(previous)} {AT[loc]}.")
        characters.append(on_screen)
        backgrounds.append(BACKGROUNDS[place])
        scene_left -= 1
    return characters, backgrounds, captions


def chunk_line(line: dict, chunk_frames: int, corefer) -> list[dict]:
    """Cut a long story line into stories of `chunk_frames` beats (the remainder kept as a shorter one;
    0: the whole story), as the StoryStream converter does: ids `<id>_<j>`, `source_id`, `orders`.
    Co-reference captions are recomputed per chunk, so a chunk never opens with a pronoun."""
    from src.data.convert.storystream import chunk_ranges

    per_frame = ("images", "captions", "characters", "boxes", "masks", "backgrounds")
    out = []
    for j, (start, end) in enumerate(chunk_ranges(len(line["images"]), chunk_frames)):
        chunk = {"id": f"{line['id']}_{j}" if chunk_frames else line["id"]}
        chunk.update({key: line[key][start:end] for key in per_frame})
        chunk["captions_coref"] = corefer(chunk["captions"], chunk["characters"])
        chunk.update(source_id=line["id"], orders=list(range(start, end)))
        out.append({key: chunk[key] for key in ("id", "images", "captions", "captions_coref", "characters",
                                                "boxes", "masks", "backgrounds", "source_id", "orders")})
    return out
