"""Co-reference captions (src/data/coref.py): the rule of docs/story_format.md on toy and Flintstones text."""

import pytest

from src.data.coref import corefer_caption, corefer_story

TOY = {"Ada": "female", "Bob": "male", "Cleo": "female", "Kit": "neutral"}
FLINTSTONES = {"fred": "male", "wilma": "female", "barney": "male", "betty": "female", "pebbles": "female",
               "mr slate": "male", "dino": "neutral"}


def same_cast(caption, names, genders):
    """Rewrite a caption whose characters all appeared in the previous frame."""
    return corefer_caption(caption, names, names, genders)


@pytest.mark.parametrize("caption, names, expected", [
    ("Ada walked on the beach.", ["Ada"], "She walked on the beach."),
    ("Bob walked on the beach.", ["Bob"], "He walked on the beach."),
    ("Kit waited at night.", ["Kit"], "They waited at night."),  # neutral -> they
    ("Ada and Bob played in the city.", ["Ada", "Bob"], "They played in the city."),
    ("Ada, Bob and Cleo danced.", ["Ada", "Bob", "Cleo"], "They danced."),
    ("Ada, Bob, and Cleo danced.", ["Ada", "Bob", "Cleo"], "They danced."),
    ("In the forest, Ada and Bob rested.", ["Ada", "Bob"], "In the forest, they rested."),
    ("Ada met Bob on the beach.", ["Ada", "Bob"], "She met him on the beach."),
    ("Bob waved to Kit in the forest.", ["Bob", "Kit"], "He waved to them in the forest."),
    ("Ada walked and Bob ran.", ["Ada", "Bob"], "She walked and he ran."),
])
def test_toy_captions(caption, names, expected):
    assert same_cast(caption, names, TOY) == expected


@pytest.mark.parametrize("caption, names, expected", [
    # case-insensitive, punctuation-tolerant, possessive
    ("fred is in the living room.", ["fred"], "He is in the living room."),
    ("Fred's car hit Barney.", ["fred", "barney"], "His car hit him."),
    ("Wilma and Betty's kitchen is messy.", ["wilma", "betty"], "Their kitchen is messy."),
    ("Betty talks to Wilma, then Wilma leaves.", ["wilma", "betty"], "She talks to her, then she leaves."),
    # multi-word names, with the period of "Mr." inside the name
    ("Mr Slate yells at Fred.", ["mr slate", "fred"], "He yells at him."),
    ("Mr. Slate hugged Fred. Fred smiled.", ["mr slate", "fred"], "He hugged him. He smiled."),
    ("Fred is talking to Barney while Barney sits.", ["fred", "barney"], "He is talking to him while he sits."),
    ("Fred, Wilma and Pebbles are in the room.", ["fred", "wilma", "pebbles"], "They are in the room."),
    ("Pebbles plays with Dino.", ["pebbles", "dino"], "She plays with them."),
])
def test_flintstones_captions(caption, names, expected):
    assert same_cast(caption, names, FLINTSTONES) == expected


def test_names_only_match_whole_words():
    # "Fredrick" and "Adams" are other words; the real mentions still become pronouns
    assert same_cast("Fredrick waves at Fred.", ["fred"], FLINTSTONES) == "Fredrick waves at him."
    assert same_cast("The Adams house is near Ada.", ["Ada"], TOY) == "The Adams house is near her."


def test_new_character_leaves_caption_unchanged():
    caption = "Ada and Bob walked on the beach."
    assert corefer_caption(caption, ["Ada", "Bob"], ["Ada"], TOY) == caption  # Bob enters
    assert corefer_caption(caption, ["Ada", "Bob"], None, TOY) == caption      # first frame
    assert corefer_caption("A quiet beach.", [], ["Ada"], TOY) == "A quiet beach."  # nobody on screen


def test_subset_of_previous_frame_is_rewritten():
    assert corefer_caption("Ada rested.", ["Ada"], ["Ada", "Bob"], TOY) == "She rested."


def test_story_rule_frame_by_frame():
    captions = ["Ada and Bob walked on the beach.", "Ada and Bob played on the beach.",
                "Bob waited on the beach.", "Ada and Cleo danced in the forest."]
    characters = [["Ada", "Bob"], ["Ada", "Bob"], ["Bob"], ["Ada", "Cleo"]]
    assert corefer_story(captions, characters, TOY) == [
        "Ada and Bob walked on the beach.",  # frame 0 never changes
        "They played on the beach.",
        "He waited on the beach.",
        "Ada and Cleo danced in the forest.",  # Ada and Cleo were not in frame 2
    ]


def test_deterministic_and_errors():
    captions, characters = ["Ada ran.", "Ada sat."], [["Ada"], ["Ada"]]
    assert corefer_story(captions, characters, TOY) == corefer_story(captions, characters, TOY)
    with pytest.raises(ValueError, match="2 captions but 1 character lists"):
        corefer_story(captions, [["Ada"]], TOY)
    with pytest.raises(KeyError, match="no gender for character 'Zed'"):
        corefer_caption("Zed sat.", ["Zed"], ["Zed"], TOY)
