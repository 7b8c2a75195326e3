"""An example third-party runner: the bp model trained with SGD + momentum instead of AdamW."""

import torch
import torch.nn.functional as F

from membench.runners.bp import BPRunner


class SGDRunner(BPRunner):
    name = "bp-sgd"
    summary = "bp with SGD + momentum 0.9 (example plugin)"
    same_gradients_as = "bp"  # same model and loss, so `membench verify` compares gradients

    def __init__(self, arch, res, classes, device="cpu", **options):
        super().__init__(arch, res, classes, device, **options)  # builds self.model like bp
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.total_steps)

    def step(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.detach()
