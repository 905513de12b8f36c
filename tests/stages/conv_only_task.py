"""A task whose model has no Linear layer at all (a conv net ending in a conv): what LoRA,
lowrank and dynamic int8 cannot touch. Digits as 1x8x8 images, 10 classes."""

from __future__ import annotations

from torch import nn

from stages.tasks import Task, load_task


def conv_only(width: int = 8) -> nn.Module:
    """x (B, 1, 8, 8) -> logits (B, 10): conv, ReLU, then an 8x8 conv as the classifier."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 10, 8), nn.Flatten()
    )


def make_task() -> Task:
    digits = load_task("digits-cnn")
    return Task(
        name="tests.stages.conv_only_task:make_task",
        teacher=lambda: conv_only(8),
        student=lambda: conv_only(4),
        train=digits.train,
        val=digits.val,
        test=digits.test,
        num_classes=10,
    )
