"""A callback for pipeline tests: records the optimizer step, shape and content hash of every batch the
model sees."""
import hashlib
import json
import os

import pytorch_lightning as pl


class BatchProbe(pl.Callback):
    def __init__(self, out: str):
        self.out = out
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({"stage": "train", "step": trainer.global_step, "shape": list(batch["tokens"].shape),
                             "epoch": trainer.current_epoch,
                             "sha1": hashlib.sha1(batch["tokens"].cpu().numpy().tobytes()).hexdigest()})

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches.append({"stage": "val", "step": trainer.global_step, "shape": list(batch["tokens"].shape)})

    def on_train_end(self, trainer, pl_module):
        self.save()

    def on_validation_end(self, trainer, pl_module):
        self.save()  # the pipeline validates once more after training

    def save(self):
        os.makedirs(os.path.dirname(self.out), exist_ok=True)
        with open(self.out, "w") as f:
            json.dump(self.batches, f)
