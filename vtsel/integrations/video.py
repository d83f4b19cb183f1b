"""Video: a clip's frames are selected one by one, under one budget for the whole clip.

A VLM sees a clip as a run of frames, each encoded like an image. The frames are scored
separately (the selector was trained on single crops), and with ``Budget(per_image=True)`` the
clip's tokens compete for one budget, so a frame where something happens keeps more tokens than a
static one. Nothing in ``pixel_values`` says which images are frames of one clip, so
``prune_inputs(..., clips=[...])`` says it: the number of consecutive images (in prompt order,
across the batch) that form each clip.

InternVL is the family whose processor handles video directly: ``processor(videos=...)`` turns
each frame into one 448-px tile with its own ``<img>...</img>`` block, so an 8-frame clip is
8 images here and ``clips=[8]`` gives it one budget. Any multi-image prompt of either family
can be grouped the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, pairwise


def budget_groups(crops_per_image: Sequence[int], clips: Sequence[int] | None) -> list[slice]:
    """Row slices of the crop batch that share a budget: one per image, or one per clip.

    Args:
        crops_per_image: Crops (or tiles) each image contributes, in batch order.
        clips: Images per clip, in order, summing to the number of images; None = every image
            alone.
    """
    images_per_group = [1] * len(crops_per_image) if clips is None else list(clips)
    if any(size < 1 for size in images_per_group) or sum(images_per_group) != len(
        crops_per_image
    ):
        raise ValueError(
            f"clips={list(images_per_group)} must be positive and sum to the "
            f"{len(crops_per_image)} images of the batch"
        )
    image_bounds = [0, *accumulate(crops_per_image)]  # crop row where each image starts
    group_bounds = [0, *accumulate(images_per_group)]  # image where each group starts
    return [
        slice(image_bounds[start], image_bounds[end])
        for start, end in pairwise(group_bounds)
    ]
