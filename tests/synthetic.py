"""A deterministic three-task DataModule for LightningModule tests (the real one is lit_janus.data)."""

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit_janus.batch import collate


class FixedBatches(Dataset):
    """`n` copies of one mixed batch (1 und, 1 text, 2 t2i samples), collated once."""

    def __init__(self, processor, n: int, codebook_size: int, pixels: bool = False):
        g = torch.Generator().manual_seed(0)
        img = Image.fromarray((torch.rand(20, 28, 3, generator=g) * 255).to(torch.uint8).numpy())
        t2i = []
        for prompt in ("a red circle", "two blue squares"):
            if pixels:
                t2i.append(processor.t2i_sample(prompt, pixels=torch.rand(3, processor.image.image_size,
                                                                         processor.image.image_size, generator=g) * 2 - 1))
            else:
                t2i.append(processor.t2i_sample(prompt, torch.randint(0, codebook_size, (processor.num_image_tokens,), generator=g)))
        samples = [processor.understanding_sample(img, "what colour?", "green"),
                   processor.text_sample("the triangle is left of the circle.")] + t2i
        self.batch = collate(samples, processor.pad_id)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.batch


class SyntheticData(L.LightningDataModule):
    def __init__(self, processor, n: int = 8, codebook_size: int = 64, pixels: bool = False):
        super().__init__()
        self.ds = FixedBatches(processor, n, codebook_size, pixels)

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=None)
