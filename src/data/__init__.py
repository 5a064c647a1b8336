"""The story data layer: format reader, co-reference captions, datasets, the toy generator.

Only the torch-free parts are re-exported here, so that `python -m src.data.toy` and its worker
processes start fast; import the datasets from `src.data.datasets` and tensor helpers from
`src.data.transforms`.
"""

from src.data.coref import corefer_caption, corefer_story
from src.data.stories import (
    Story,
    StoryFormatError,
    check_unique_ids,
    read_meta,
    read_split,
    read_stories,
    resolve,
)

__all__ = [
    "Story",
    "StoryFormatError",
    "check_unique_ids",
    "corefer_caption",
    "corefer_story",
    "read_meta",
    "read_split",
    "read_stories",
    "resolve",
]
