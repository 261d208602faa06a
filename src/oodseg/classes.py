"""Class names of the label sets oodseg knows (Cityscapes trainIds)."""
from __future__ import annotations

#: The 19 Cityscapes evaluation classes in trainId order (0..18); 255 is ignore.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)
