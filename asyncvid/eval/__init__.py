"""Quality and prompt-adherence metrics, and the procedural "shapes" world.

asyncvid's small default text-to-video model is trained on the shapes world and scored with it.
:mod:`.world` renders seeded clips of one shape moving over a plain background, each with a
template prompt, and splits the 168 attribute combinations into training and held-out sets.
:mod:`.adherence` checks from pixels alone whether a clip shows the colour and direction of
motion that its prompt asks for.
"""

from .adherence import FG_THRESHOLD, MIN_MOTION_PX, score_clip, score_many
from .world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    VOCABULARY,
    Combo,
    all_combinations,
    batch,
    held_out_split,
    make_clip,
    parse_prompt,
    prompt_for,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "DIRECTIONS", "VOCABULARY", "Combo",
    "all_combinations", "batch", "held_out_split", "make_clip", "parse_prompt", "prompt_for",
    "FG_THRESHOLD", "MIN_MOTION_PX", "score_clip", "score_many",
]
