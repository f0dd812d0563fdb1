"""`python main.py predict`: images from prompts and answers about images, from any checkpoint.

    python main.py predict --config configs/predict/t2i.yaml \\
        --model.init_args.checkpoint PATH --data.init_args.path prompts.txt
    python main.py predict --config configs/predict/geneval.yaml --model.init_args.checkpoint PATH
    python main.py predict --config configs/predict/understand.yaml \\
        --model.init_args.checkpoint PATH --data.init_args.path questions.jsonl

- `JanusGenerator` (LightningModule) loads the checkpoint in `configure_model` (a pretrained
  directory in DeepSeek's or transformers' layout, a Lightning `.ckpt`, or a sharded checkpoint)
  and samples with the fast `StaticDecoder`.
- `PromptData` (LightningDataModule) reads a .txt of prompts (one per line), a JSONL of
  {"prompt", optional "seed", "n", "metadata"}, GenEval's `evaluation_metadata.jsonl`, or a JSONL of
  {"image", "question", optional "id", "seed", "metadata"} (image paths relative to the JSONL's folder;
  "id" and "metadata" are copied to the answer's line).
- `ImageWriter` / `AnswerWriter` (prediction writers) write one PNG per image, a grid per prompt
  and `metadata.jsonl`, or GenEval's `<index:05d>/{metadata.jsonl,samples/<n:04d>.png}` layout, or
  `answers.jsonl`.

Bad items (empty prompt, prompt too long for the context, missing or unreadable image, invalid
JSON line) are recorded in `<output_dir>/errors.jsonl` while the others are produced
(`fail_fast: true` stops at the first instead). Files are written atomically (temp + rename) and
an item counts as written once its metadata line is; a rerun into the same directory skips those,
so a killed run resumes where it stopped - and only that run: `run.json` there records the
checkpoint and sampling settings, so a rerun with others stops with an error.

Modules: `inputs` (files -> items, `PromptData`), `generator` (`JanusGenerator`), `writers`.
"""

from lit_janus.predict.generator import JanusGenerator
from lit_janus.predict.inputs import PromptData, read_items
from lit_janus.predict.writers import AnswerWriter, ImageWriter, image_grid, save_png

__all__ = ["AnswerWriter", "ImageWriter", "JanusGenerator", "PromptData", "image_grid", "read_items", "save_png"]
