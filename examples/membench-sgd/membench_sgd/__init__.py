"""An example third-party runner: the bp model (backbone -> GAP -> Linear) trained with SGD."""

import torch
import torch.nn.functional as F

from membench.archs import build_conv_stack
from membench.runners import Runner, RunnerContract
from membench.runners.bp import StackClassifier


class SGDRunner(Runner):
    name = "bp-sgd"
    summary = "bp's model with SGD + momentum 0.9 (example plugin)"
    # It needs a conv stack (it builds one), and has bp's model, seed and loss, so `membench
    # verify` compares its first-step gradients with bp's.
    contract = RunnerContract(layer_stack=True, same_gradients_as="bp")

    def __init__(self, cell, device="cpu", **options):
        super().__init__(cell, device, **options)
        torch.manual_seed(self.seed)  # the same seed and build order as bp give bp's weights
        backbone = build_conv_stack(self.arch, dropout=0.1 if self.dropout else 0.0)
        self.model = self.place(StackClassifier(backbone, self.classes))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return [self.optimizer]

    def step(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        return loss.detach()  # no .item(): it would synchronize inside the timed step
