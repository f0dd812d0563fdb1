"""ShapesWorld (procedural data for every stage) and ShapesEval (GenEval-style scoring)."""

# ``evaluate`` (the function) is not re-exported: it would shadow the ``evaluate`` submodule.
from .evaluate import Detection, detect, format_table, score_one, vqa_accuracy
from .world import (
    CATEGORIES,
    CLASS_NAMES,
    HELDOUT,
    Obj,
    Scene,
    ShapesWorld,
    make_qa,
    make_sentence,
    make_t2i,
    render,
    split_words,
    vocabulary,
)

__all__ = [
    "CATEGORIES", "CLASS_NAMES", "HELDOUT", "Detection", "Obj", "Scene", "ShapesWorld", "detect",
    "format_table", "make_qa", "make_sentence", "make_t2i", "render", "score_one", "split_words",
    "vocabulary", "vqa_accuracy",
]
