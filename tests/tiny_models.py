"""Small models the tests name by import path (``tiny_models:tiny_vit``), as a user names their
own: each a factory taking ``num_classes``."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from membench.archs import LayerStack


def tiny_vit(num_classes: int) -> VisionTransformer:
    """torchvision's ViT (trunc_normal_ initialisation, nn.MultiheadAttention), at 16 x 16 in
    4 x 4 patches, 2 layers of width 16: a step takes milliseconds."""
    return VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=num_classes,
    )


def tiny_vit_attention_dropout(num_classes: int) -> VisionTransformer:
    """``tiny_vit`` with dropout on the attention weights (as BERT and GPT-2 train): the CPU's
    attention kernel takes its math path, CUDA's stays fused."""
    return VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=num_classes,
        attention_dropout=0.1,
    )


class InplaceNet(nn.Module):
    """Conv and in-place ReLU, four times: checkpointed in segments of three (about √8), so
    the second segment starts with an in-place ReLU (as MobileNet's classifier starts one with
    an in-place dropout)."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers = []
        for c_in in (3, 8, 8, 8):
            layers += [nn.Conv2d(c_in, 8, 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def inplace_net(num_classes: int) -> InplaceNet:
    """A classifier whose checkpoint segments start in place."""
    return InplaceNet(num_classes)


class _Remember(nn.Module):
    """conv + ReLU that leaves its output in ``memory``: a map another unit may read."""

    def __init__(self, c_in: int, c_out: int, memory: dict):
        super().__init__()
        self.conv, self.memory = nn.Conv2d(c_in, c_out, 3, padding=1), memory

    def forward(self, x):
        self.memory["z"] = z = torch.relu(self.conv(x))
        return z


class _Recall(nn.Module):
    """conv + ReLU plus what an earlier unit left in ``memory``: a shortcut across a unit
    boundary, which the layer-stack contract forbids."""

    def __init__(self, channels: int, memory: dict):
        super().__init__()
        self.conv, self.memory = nn.Conv2d(channels, channels, 3, padding=1), memory

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.memory["z"]


def leaky_stack(num_classes: int) -> LayerStack:
    """Two units whose second reads the first's output past the boundary."""
    memory: dict = {}
    return LayerStack([_Remember(3, 8, memory), _Recall(8, memory)], [8, 8], name="leaky")


def plain_stack(num_classes: int) -> LayerStack:
    """The same two units without the shortcut across the boundary."""
    return LayerStack(
        [
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        ],
        [8, 8],
    )


class PositionBiasNet(nn.Module):
    """A conv whose output gets a bias per position, looked up through an index buffer that the
    constructor makes on its parameters' device (as timm's Swin makes its relative position
    index and attention mask), a mask kept as a plain tensor attribute made the same way, and a
    scale per position in a buffer made on the CPU and filled from that device (as timm's
    Swin-v2 fills its relative coordinates table); the conv's output size is found by running
    it on a real zero image (as timm's hybrid ViTs size their backbone's output)."""

    def __init__(self, num_classes: int, res: int = 8):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.table = nn.Parameter(torch.zeros(res * res, 4))
        device = self.table.device  # meta when membench builds the model for an estimate
        self.register_buffer(
            "index", torch.arange(res * res, device=device).flip(0), persistent=False
        )
        self.mask = torch.ones(res * res, 1, device=device)
        self.register_buffer("scale", torch.empty(res * res, 1), persistent=False)
        self.scale.copy_(torch.linspace(0.5, 1.5, res * res, device=device)[:, None])
        with torch.no_grad():
            self.grid = tuple(self.conv.eval()(torch.zeros(1, 3, res, res)).shape[2:])
        self.conv.train()
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        bias = (self.table[self.index] * self.mask * self.scale).t().reshape(1, 4, *self.grid)
        return self.head((self.conv(x) + bias).mean(dim=(2, 3)))


def position_bias_net(num_classes: int) -> PositionBiasNet:
    """A classifier with buffers made on its parameters' device, at 8 x 8."""
    return PositionBiasNet(num_classes)


class _BiasedBlock(nn.Module):
    """Linear + GELU plus a bias its owner passes by keyword (as timm's BEiT passes its blocks
    ``shared_rel_pos_bias=``)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x, shared_bias=None):
        return x + nn.functional.gelu(self.linear(x) + shared_bias)


class KeywordBlocksNet(nn.Module):
    """Patch tokens through blocks called one by one with a keyword argument: a ModuleList
    (timm's BEiT) or a Sequential (timm's NaFlexViT)."""

    def __init__(self, num_classes: int, width: int = 8, container=nn.ModuleList):
        super().__init__()
        self.embed = nn.Conv2d(3, width, 4, stride=4)
        self.shared_bias = nn.Parameter(torch.zeros(width))
        self.blocks = (
            container(*[_BiasedBlock(width) for _ in range(4)])
            if container is nn.Sequential
            else container(_BiasedBlock(width) for _ in range(4))
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x, shared_bias=self.shared_bias)
        return self.head(x.mean(dim=1))


def keyword_blocks_net(num_classes: int) -> KeywordBlocksNet:
    """A classifier whose blocks take a keyword argument beside their input."""
    return KeywordBlocksNet(num_classes)


def keyword_sequential_net(num_classes: int) -> KeywordBlocksNet:
    """The same, its blocks a Sequential its forward iterates."""
    return KeywordBlocksNet(num_classes, container=nn.Sequential)


class StageOutputsNet(nn.Module):
    """Four conv stages in a Sequential, whose forward iterates them and keeps the second's and
    the fourth's outputs by index (as timm's MobileNet-v5 gathers stage outputs)."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.stages = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(3 if i == 0 else width, width, 3, padding=1), nn.ReLU())
                for i in range(4)
            )
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        kept = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in (1, 3):
                kept.append(x.mean(dim=(2, 3)))
        return self.head(kept[0] + kept[1])


def stage_outputs_net(num_classes: int) -> StageOutputsNet:
    """A classifier whose forward indexes its stages' outputs."""
    return StageOutputsNet(num_classes)


class NamedHeadNet(nn.Module):
    """Conv stages, and a head Sequential whose forward calls its members by name and reads
    one's attribute (as timm's MetaFormer does)."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.stages = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten(1)),
                    ("fc", nn.Linear(width, num_classes)),
                ]
            )
        )

    def forward(self, x):
        x = self.head.flatten(self.head.pool(self.stages(x)))
        assert x.shape[1] == self.head.fc.in_features
        return self.head.fc(x)


def named_head_net(num_classes: int) -> NamedHeadNet:
    """A classifier whose head's members are called by name."""
    return NamedHeadNet(num_classes)


class NestedListNet(nn.Module):
    """Stages in a ModuleList, each a ModuleList of blocks the forward iterates (timm's Twins)."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.embed = nn.Conv2d(3, width, 3, padding=1)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for _ in range(2)
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.embed(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(x.mean(dim=(2, 3)))


def nested_list_net(num_classes: int) -> NestedListNet:
    """A classifier with a list of lists of blocks."""
    return NestedListNet(num_classes)
