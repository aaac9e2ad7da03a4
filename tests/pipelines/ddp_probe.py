"""A callback for the DDP test: each rank records the windows it trained on and its final weights."""
import hashlib
import json
import os

import pytorch_lightning as pl
import torch


class RankProbe(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.windows: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for row in batch["tokens"]:
            self.windows.append(hashlib.sha1(row.numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "windows": self.windows,
                  "weights_sha1": hashlib.sha1(flat.numpy().tobytes()).hexdigest(),
                  "weights_sum": float(flat.double().sum())}
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)
