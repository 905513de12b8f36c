"""A zoo of small user-style tasks: models and data written the way users write them.

Each entry is a zero-argument callable returning a `stages.Task`, exactly what a user names with
`task: tests.zoo:<callable>`. Widths are tiny so every stage runs in seconds on one CPU thread;
the architectures are the real ones (written by hand: torchvision does not import here).

- `mobilenet`: MobileNetV2-style inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project,
  ReLU6, residual add) on the 8x8 digits images.
- `resnet`: ResNet BasicBlocks (two 3x3 convs + BN, identity or 1x1-conv shortcut).
- `timeseries`: Conv1d + BatchNorm1d on synthetic 2-channel sequences (class = frequency).
- `tabular`: a residual MLP with LayerNorm, GELU and Dropout on scikit-learn's breast_cancer.
- `transformer`: Embedding + `nn.TransformerEncoder` (batch_first) on int64 token ids.
- `two_inputs`: wine as two feature groups, `model(x_chem, x_color)` returning
  `(logits, features)` (a tuple whose first element is the logits).
- `hf_output`: token ids into an embedding/MLP classifier returning a Hugging Face-style output
  object (a dataclass with `.logits`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from stages.tasks import Task

SEED = 0


# -- data -------------------------------------------------------------------------------------


def _split_indices(y: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Stratified 70/15/15 split with a fixed seed."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(y)))
    train, rest = train_test_split(idx, train_size=0.7, stratify=y.numpy(), random_state=SEED)
    val, test = train_test_split(rest, train_size=0.5, stratify=y[rest].numpy(), random_state=SEED)
    return train, val, test


def _splits(x: torch.Tensor, y: torch.Tensor) -> tuple[Dataset, Dataset, Dataset]:
    train, val, test = _split_indices(y)
    return (
        TensorDataset(x[train], y[train]),
        TensorDataset(x[val], y[val]),
        TensorDataset(x[test], y[test]),
    )


class PairDataset(Dataset):
    """Samples `((a, b), y)`: a model with two inputs, as a user's Dataset yields them."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> None:
        self.a, self.b, self.y = a, b, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.a[i], self.b[i]), self.y[i]


@functools.lru_cache(maxsize=1)
def _digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(data.target, dtype=torch.long)


def _standardized(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


# -- MobileNetV2 ------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand -> 3x3 depthwise -> 1x1 project (+ x when shapes match)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, stride=1, expand=2),
            InvertedResidual(width, 2 * width, stride=2, expand=2),
            InvertedResidual(2 * width, 2 * width, stride=1, expand=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def mobilenet() -> Task:
    train, val, test = _splits(*_digit_images())
    return Task(
        name="zoo-mobilenet",
        teacher=lambda: MobileNetV2(width=8),
        student=lambda: MobileNetV2(width=4),
        train=train,
        val=val,
        test=test,
        num_classes=10,
        description="MobileNetV2-style (depthwise, inverted residual, ReLU6) on digits images",
    )


# -- ResNet -----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # type: ignore[no-any-return]


def resnet() -> Task:
    train, val, test = _splits(*_digit_images())
    return Task(
        name="zoo-resnet",
        teacher=lambda: ResNet(width=8),
        student=lambda: ResNet(width=4),
        train=train,
        val=val,
        test=test,
        num_classes=10,
        description="ResNet BasicBlocks on digits images",
    )


# -- 1-D conv time series ---------------------------------------------------------------------


class TimeSeriesCNN(nn.Module):
    """Conv1d-BN1d-ReLU twice, global average pool, Linear. x: (B, 2, 32) float."""

    def __init__(self, width: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).squeeze(-1))  # type: ignore[no-any-return]


def _sequences(n: int = 600, length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: a sine of frequency (k + 1) / 8 cycles a step, random phase, plus noise."""
    g = torch.Generator().manual_seed(SEED)
    y = torch.arange(n) % 3
    t = torch.arange(length, dtype=torch.float32)
    phase = torch.rand(n, 1, generator=g) * 6.283
    freq = (y.float()[:, None] + 1.0) / 8.0
    wave = torch.sin(6.283 * freq * t[None, :] + phase)
    noise = torch.randn(n, 2, length, generator=g) * 0.3
    x = torch.stack([wave, torch.cos(6.283 * freq * t[None, :] + phase)], dim=1) + noise
    return x.float(), y.long()


def timeseries() -> Task:
    train, val, test = _splits(*_sequences())
    return Task(
        name="zoo-timeseries",
        teacher=lambda: TimeSeriesCNN(width=16),
        student=lambda: TimeSeriesCNN(width=6),
        train=train,
        val=val,
        test=test,
        num_classes=3,
        description="Conv1d + BatchNorm1d on synthetic 2-channel sequences",
    )


# -- residual MLP on tabular data -------------------------------------------------------------


class ResidualMLPBlock(nn.Module):
    """x + Dropout(Linear(GELU(Linear(LayerNorm(x)))))  (pre-norm, as in Transformers' FFN)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.act(self.fc1(self.norm(x)))))  # type: ignore[no-any-return]


class ResidualMLP(nn.Module):
    def __init__(self, in_features: int, dim: int, num_classes: int, *, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, dim)
        self.blocks = nn.Sequential(
            *[ResidualMLPBlock(dim, 2 * dim, dropout=0.1) for _ in range(blocks)]
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.blocks(self.inp(x))))  # type: ignore[no-any-return]


def tabular() -> Task:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = _standardized(torch.tensor(data.data, dtype=torch.float32))
    y = torch.tensor(data.target, dtype=torch.long)
    train, val, test = _splits(x, y)
    return Task(
        name="zoo-tabular",
        teacher=lambda: ResidualMLP(30, 32, 2),
        student=lambda: ResidualMLP(30, 16, 2, blocks=1),
        train=train,
        val=val,
        test=test,
        num_classes=2,
        description="residual MLP (LayerNorm, GELU, Dropout) on breast_cancer",
    )


# -- Transformer encoder on token ids ---------------------------------------------------------

VOCAB = 16
SEQ_LEN = 12


class TransformerClassifier(nn.Module):
    """Embedding + learned positions -> nn.TransformerEncoder -> mean pool -> Linear.

    x: (B, SEQ_LEN) int64 token ids -> (B, num_classes) logits.
    """

    def __init__(self, d_model: int = 16, nhead: int = 2, layers: int = 1, num_classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(1, SEQ_LEN, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=2 * d_model, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos)
        return self.head(h.mean(dim=1))  # type: ignore[no-any-return]


def _token_ids(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: token k + 1 appears at ~40% of the positions, the rest from 4..15 (int64)."""
    g = torch.Generator().manual_seed(SEED)
    y = torch.arange(n) % 3
    ids = torch.randint(4, VOCAB, (n, SEQ_LEN), generator=g)
    marked = torch.rand(n, SEQ_LEN, generator=g) < 0.4
    ids = torch.where(marked, (y + 1)[:, None].expand(n, SEQ_LEN), ids)
    return ids.long(), y.long()


def transformer() -> Task:
    train, val, test = _splits(*_token_ids())
    return Task(
        name="zoo-transformer",
        teacher=lambda: TransformerClassifier(d_model=16, nhead=2),
        student=lambda: TransformerClassifier(d_model=8, nhead=2),
        train=train,
        val=val,
        test=test,
        num_classes=3,
        description="Embedding + nn.TransformerEncoder on synthetic int64 token ids",
    )


# -- two inputs, tuple output -----------------------------------------------------------------


class TwoTower(nn.Module):
    """model(x_chem, x_color) -> (logits, features): two feature groups, one head."""

    def __init__(self, hidden: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.chem = nn.Sequential(nn.Linear(8, hidden), nn.ReLU())
        self.color = nn.Sequential(nn.Linear(5, hidden), nn.ReLU())
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(
        self, x_chem: torch.Tensor, x_color: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([self.chem(x_chem), self.color(x_color)], dim=1)
        return self.head(features), features


def two_inputs() -> Task:
    from sklearn.datasets import load_wine

    data = load_wine()
    x = _standardized(torch.tensor(data.data, dtype=torch.float32))
    y = torch.tensor(data.target, dtype=torch.long)
    # wine's columns: 0-7 and 12 are chemistry, 8-11 colour (hue, intensity, ...)
    chem = x[:, [0, 1, 2, 3, 4, 5, 6, 7]]
    color = x[:, [8, 9, 10, 11, 12]]
    train, val, test = _split_indices(y)
    return Task(
        name="zoo-two-inputs",
        teacher=lambda: TwoTower(hidden=16),
        student=lambda: TwoTower(hidden=6),
        train=PairDataset(chem[train], color[train], y[train]),
        val=PairDataset(chem[val], color[val], y[val]),
        test=PairDataset(chem[test], color[test], y[test]),
        num_classes=3,
        description="wine as two inputs (chemistry, colour); the model returns (logits, features)",
    )


# -- Hugging Face-style output ----------------------------------------------------------------


@dataclass
class ClassifierOutput:
    """As transformers' SequenceClassifierOutput: a dataclass with `.logits`."""

    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None


class BagOfTokens(nn.Module):
    """Embedding -> mean over positions -> MLP; returns ClassifierOutput(logits=...)."""

    def __init__(self, d_model: int = 16, hidden: int = 32, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, input_ids: torch.Tensor) -> ClassifierOutput:
        hidden = self.mlp(self.embed(input_ids).mean(dim=1))
        return ClassifierOutput(logits=self.classifier(hidden), hidden_states=hidden)


def hf_output() -> Task:
    train, val, test = _splits(*_token_ids())
    return Task(
        name="zoo-hf-output",
        teacher=lambda: BagOfTokens(d_model=16, hidden=32),
        student=lambda: BagOfTokens(d_model=8, hidden=12),
        train=train,
        val=val,
        test=test,
        num_classes=3,
        description="int64 token ids; the model returns a dataclass with .logits (HF style)",
    )


ZOO: dict[str, Callable[[], Task]] = {
    "mobilenet": mobilenet,
    "resnet": resnet,
    "timeseries": timeseries,
    "tabular": tabular,
    "transformer": transformer,
    "two_inputs": two_inputs,
    "hf_output": hf_output,
}
"""{short name: task factory}; a sweep names one as `tests.zoo:<short name>`."""
