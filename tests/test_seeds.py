"""The examples of the documents in ../shared/seeds, reproduced through fastln."""

from __future__ import annotations

import pytest
import torch
from torch import nn, optim

import fastln


def test_seed_003_normalize_last_dim_and_last_two_dims():
    x = torch.tensor([[[1.0, 2, -1, 1], [3, 4, -2, 2]], [[1, 2, -1, 1], [3, 4, -2, 2]]])
    assert x.shape == (2, 2, 4)
    over_last = fastln.LayerNorm(normalized_shape=[4])(x)
    expected_last = torch.tensor(
        [[0.2294, 1.1471, -1.6059, 0.2294], [0.5488, 0.9879, -1.6465, 0.1098]]
    ).expand(2, 2, 4)
    torch.testing.assert_close(over_last, expected_last, atol=1e-4, rtol=0)
    # Each normalized row sums to zero (the document prints ~1e-16).
    torch.testing.assert_close(over_last.sum(-1), torch.zeros(2, 2), atol=1e-6, rtol=0)

    over_two = fastln.LayerNorm(normalized_shape=[2, 4])(x)
    expected_two = torch.tensor(
        [[-0.1348, 0.4045, -1.2136, -0.1348], [0.9439, 1.4832, -1.7529, 0.4045]]
    ).expand(2, 2, 4)
    torch.testing.assert_close(over_two, expected_two, atol=1e-4, rtol=0)
    torch.testing.assert_close(over_two.sum((-2, -1)), torch.zeros(2), atol=1e-6, rtol=0)
    assert over_two.grad_fn is not None  # a trainable module's output carries a graph


def test_seed_001_matches_hand_written_layer_norm():
    def layer_norm_process(feature, beta=0.0, gamma=1.0, eps=1e-5):
        var, mean = torch.var_mean(feature, dim=-1, unbiased=False)
        feature = (feature - mean[..., None]) / torch.sqrt(var[..., None] + eps)
        return feature * gamma + beta

    t = torch.rand(4, 2, 3)
    norm = fastln.LayerNorm(normalized_shape=t.shape[-1], eps=1e-5)
    torch.testing.assert_close(norm(t), layer_norm_process(t, eps=1e-5))


def test_seed_001_error_message():
    with pytest.raises(RuntimeError) as info:
        fastln.LayerNorm(normalized_shape=[2])(torch.rand(4, 2, 3))
    assert (
        "Given normalized_shape=[2], expected input with shape [*, 2], "
        "but got input of size[4, 2, 3]"
    ) in str(info.value)


def test_seed_000_ones_with_eps_zero_and_nlp_example():
    entry = torch.ones(54, 12, 28, 29)
    gn = fastln.LayerNorm(normalized_shape=entry.size()[1:], eps=0, elementwise_affine=True)
    out = gn(entry)
    assert out.shape == (54, 12, 28, 29)
    # Constant input with eps=0 is 0/0: NaN, exactly as torch.
    ref = nn.LayerNorm(normalized_shape=entry.size()[1:], eps=0)(entry)
    assert torch.isnan(ref).all() and torch.isnan(out).all()
    # A single int normalizes over the last dim; constant rows give 0 with eps>0.
    assert torch.equal(fastln.LayerNorm(normalized_shape=29)(entry), torch.zeros_like(entry))

    batch, sentence_length, embedding_dim = 20, 5, 10
    embedding = torch.randn(batch, sentence_length, embedding_dim)
    ours = fastln.LayerNorm(embedding_dim)(embedding)
    torch.testing.assert_close(ours, nn.LayerNorm(embedding_dim)(embedding))


def test_seed_004_module_api():
    m = fastln.LayerNorm(16)
    assert m.normalized_shape == (16,) and m.eps == 1e-5 and m.elementwise_affine
    assert torch.equal(m.weight, torch.ones(16)) and torch.equal(m.bias, torch.zeros(16))
    # The document's repr; newer torch appends ", bias=True", and so do we.
    assert m.extra_repr().startswith("(16,), eps=1e-05, elementwise_affine=True")
    assert m.extra_repr() == nn.LayerNorm(16).extra_repr()
    off = fastln.LayerNorm(16, elementwise_affine=False)
    assert off.weight is None and off.bias is None and len(list(off.parameters())) == 0
    # No running statistics: train and eval give the same output.
    x = torch.randn(3, 16)
    y_train = m(x)
    m.eval()
    assert torch.equal(m(x), y_train)


class LayerNormBlock(nn.Module):
    def __init__(self, embedding_size: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.layer_norm = norm(embedding_size)
        self.fc = nn.Linear(embedding_size, embedding_size)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(self.layer_norm(x)))


class SimpleLayerNormModel(nn.Module):
    def __init__(
        self, input_dim: int, hidden_dim: int, num_classes: int, norm: type[nn.Module]
    ) -> None:
        super().__init__()
        self.layer1 = LayerNormBlock(input_dim, norm)
        self.layer2 = LayerNormBlock(hidden_dim, norm)
        self.layer3 = LayerNormBlock(hidden_dim, norm)
        self.fc_out = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layer3(self.layer2(self.layer1(x))))


def _train_seed_002(norm: type[nn.Module]):
    torch.manual_seed(42)
    input_data = torch.randn(32, 128)
    model = SimpleLayerNormModel(128, 128, 10, norm)
    output = model(input_data)
    assert output.shape == (32, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    targets = torch.randint(0, 10, (32,))
    optimizer.zero_grad()
    loss = criterion(output, targets)
    loss.backward()
    optimizer.step()
    stats = {
        name: (p.data.mean().item(), p.data.std().item())
        for name, p in model.named_parameters()
        if "layer_norm" in name
    }
    test_output = model(torch.randn(32, 128) * 10 + 50)
    return loss.item(), stats, test_output


def test_seed_002_training_step_of_layer_norm_blocks():
    loss_ours, stats_ours, out_ours = _train_seed_002(fastln.LayerNorm)
    loss_torch, stats_torch, out_torch = _train_seed_002(nn.LayerNorm)
    assert loss_ours == pytest.approx(loss_torch, rel=1e-5)
    assert list(stats_ours) == [
        f"layer{i}.layer_norm.{p}" for i in (1, 2, 3) for p in ("weight", "bias")
    ]
    for name, (mean, std) in stats_ours.items():
        # One Adam step at lr=1e-3 moves every parameter by about 1e-3, as in
        # the document (weight mean 1.0000, std 0.0010).
        assert mean == pytest.approx(stats_torch[name][0], abs=1e-4)
        assert std == pytest.approx(stats_torch[name][1], abs=1e-4)
        assert std == pytest.approx(0.001, abs=2e-4)
    assert out_ours.shape == (32, 10)
    torch.testing.assert_close(out_ours, out_torch, atol=1e-4, rtol=1e-4)
