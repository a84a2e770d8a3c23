"""ART evasion attacks focused by saliency maps: FocusedFGSM, FocusedPGD, FocusedCarliniL2, and per-image
searches for the smallest focus area / budget that still fools the model."""

from focused_attacks.carlini import FocusedCarliniL2
from focused_attacks.fgsm import FocusedFGSM
from focused_attacks.masks import maps_to_mask, normalize_mask
from focused_attacks.pgd import FocusedPGD
from focused_attacks.search import SearchResult, minimal_area, minimal_eps

__all__ = [
    "FocusedCarliniL2",
    "FocusedFGSM",
    "FocusedPGD",
    "SearchResult",
    "maps_to_mask",
    "minimal_area",
    "minimal_eps",
    "normalize_mask",
]
