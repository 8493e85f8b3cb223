"""fastln.LayerNorm / fastln.layer_norm / replace_layernorm as drop-ins for torch's."""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from torch import nn

import fastln


def test_functional_signature_matches_torch():
    ours = inspect.signature(fastln.layer_norm)
    theirs = inspect.signature(F.layer_norm)
    assert list(ours.parameters) == list(theirs.parameters)
    for name, p in theirs.parameters.items():
        assert ours.parameters[name].default == p.default, name


def test_normalized_shape_forms():
    x = torch.randn(2, 3, 4)
    want = F.layer_norm(x, [4])
    for ns in (4, [4], (4,), torch.Size([4])):
        assert_close(fastln.layer_norm(x, ns), want.double(), torch.float32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalized_shape": 10},
        {"normalized_shape": [3, 4], "eps": 1e-6},
        {"normalized_shape": (8,), "elementwise_affine": False},
        {"normalized_shape": 8, "bias": False},
        {"normalized_shape": 8, "dtype": torch.float64},
        {"normalized_shape": 8, "device": "cpu", "dtype": torch.bfloat16},
    ],
    ids=str,
)
def test_module_matches_torch(kwargs):
    ours, theirs = fastln.LayerNorm(**kwargs), nn.LayerNorm(**kwargs)
    assert repr(ours) == repr(theirs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert ours.normalized_shape == theirs.normalized_shape
    assert ours.eps == theirs.eps and ours.elementwise_affine == theirs.elementwise_affine
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert isinstance(ours, nn.LayerNorm)


def test_constructor_signature_matches_torch():
    assert inspect.signature(fastln.LayerNorm) == inspect.signature(nn.LayerNorm)


def test_state_dict_round_trip():
    theirs = nn.LayerNorm([3, 5])
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = fastln.LayerNorm([3, 5])
    ours.load_state_dict(theirs.state_dict())
    back = nn.LayerNorm([3, 5])
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, theirs.weight) and torch.equal(back.bias, theirs.bias)
    x = torch.randn(4, 3, 5)
    assert_close(ours(x), theirs(x).double(), torch.float32)


def test_module_pickles_and_deepcopies():
    m = fastln.LayerNorm(6)
    m2 = pickle.loads(pickle.dumps(m))
    assert type(m2) is fastln.LayerNorm and torch.equal(m2.weight, m.weight)


def test_reset_parameters():
    m = fastln.LayerNorm(7)
    with torch.no_grad():
        m.weight.fill_(3)
        m.bias.fill_(2)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones(7)) and torch.equal(m.bias, torch.zeros(7))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.lin = nn.Linear(16, 16)
        self.inner = nn.Sequential(nn.LayerNorm(16, elementwise_affine=False), nn.ReLU())


class _MyNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_replace_layernorm():
    model = nn.Sequential(_Block(), nn.LayerNorm(16, bias=False), _MyNorm(16)).to(torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    want = model[0].inner(model[0].lin(model[0].norm(x)))
    norm = model[0].norm
    weight = norm.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    norm.register_forward_hook(lambda *_: calls.append(1))

    assert fastln.replace_layernorm(model) is model
    assert type(model[0].norm) is fastln.LayerNorm
    assert type(model[0].inner[0]) is fastln.LayerNorm
    assert type(model[1]) is fastln.LayerNorm and model[1].bias is None
    assert type(model[2]) is _MyNorm  # user subclasses keep their own forward
    assert model[0].norm is norm and norm.weight is weight  # same objects
    assert weight.dtype == torch.float64

    got = model[0].inner(model[0].lin(model[0].norm(x)))
    assert calls == [1]
    assert_close(got, want, torch.float64)
    got.sum().backward()
    opt.step()  # the optimizer built before the swap still owns the parameters
    assert not torch.equal(weight, torch.ones(16, dtype=torch.float64))


def test_replace_root_module():
    m = nn.LayerNorm(4)
    assert type(fastln.replace_layernorm(m)) is fastln.LayerNorm


# --- bad input: same exception types and messages as torch --------------------

BAD_INPUTS = [
    (
        lambda: (torch.randn(4, 2, 3), [2], None, None),
        RuntimeError,
        r"Given normalized_shape=\[2\], expected input with shape \[\*, 2\], "
        r"but got input of size\[4, 2, 3\]",
    ),
    (
        lambda: (torch.randn(4, 2, 3), [4, 2], None, None),
        RuntimeError,
        r"Given normalized_shape=\[4, 2\], expected input with shape \[\*, 4, 2\]",
    ),
    (
        lambda: (torch.randn(3), [2, 3], None, None),
        RuntimeError,
        r"expected input with shape \[\*, 2, 3\], but got input of size\[3\]",
    ),
    (
        lambda: (torch.randn(4, 3), [], None, None),
        RuntimeError,
        r"Expected normalized_shape to be at least 1-dimensional",
    ),
    (
        lambda: (torch.randn(4, 3), [3], torch.ones(4), None),
        RuntimeError,
        r"Expected weight to be of same shape as normalized_shape, but got weight of shape \[4\] "
        r"and normalized_shape = \[3\]",
    ),
    (
        lambda: (torch.randn(4, 3), [3], None, torch.ones(2, 3)),
        RuntimeError,
        r"Expected bias to be of same shape as normalized_shape",
    ),
    (
        lambda: (torch.randn(4, 3), [3], torch.ones(3, dtype=torch.float64), None),
        RuntimeError,
        r"Expected weight to have the input's dtype",
    ),
    (
        lambda: (
            torch.randn(4, 3, dtype=torch.bfloat16),
            [3],
            torch.ones(3),
            torch.ones(3, dtype=torch.bfloat16),
        ),
        RuntimeError,
        r"Expected weight and bias to have the same dtype",
    ),
    (
        lambda: (torch.randn(4, 3), [3], torch.ones(3, device="meta"), None),
        RuntimeError,
        r"Expected weight to be on the same device as input",
    ),
    (
        lambda: (torch.ones(4, 3, dtype=torch.int32), [3], None, None),
        NotImplementedError,
        r"not implemented for 'Int'",
    ),
    (
        lambda: (torch.ones(4, 3, dtype=torch.complex64), [3], None, None),
        NotImplementedError,
        r"not implemented for 'ComplexFloat'",
    ),
]


@pytest.mark.parametrize("make,exc,message", BAD_INPUTS)
def test_bad_input_raises_like_torch(make, exc, message):
    x, ns, w, b = make()
    with pytest.raises(exc, match=message):
        fastln.layer_norm(x, ns, w, b)
    # torch raises the same exception type for the same input (for the shape
    # errors also the same message).
    if w is None or w.device == x.device:
        with pytest.raises(exc):
            F.layer_norm(x, ns, w, b)


def test_bad_input_message_of_the_seed_document():
    # The example of seeds/001: normalized_shape=[2] on a [4, 2, 3] input.
    x = torch.rand(4, 2, 3)
    with pytest.raises(RuntimeError) as ours:
        fastln.LayerNorm([2])(x)
    with pytest.raises(RuntimeError) as theirs:
        nn.LayerNorm([2])(x)
    assert str(ours.value).splitlines()[0] == str(theirs.value).splitlines()[0]


def test_bad_grad_out_shape_raises():
    x = torch.randn(3, 4)
    _, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [4], None, None, 1e-5)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.fastln.layer_norm_bwd(
            torch.randn(3, 5), x, [4], mean, rstd, None, None, [True, False, False]
        )
    with pytest.raises(RuntimeError, match="mean"):
        torch.ops.fastln.layer_norm_bwd(
            torch.randn(3, 4), x, [4], mean[:2], rstd, None, None, [True, False, False]
        )


def test_unsupported_device_is_a_clear_error():
    from fastln.functional import _supported_device

    assert _supported_device(torch.empty(0))
    assert _supported_device(torch.empty(0, device="meta"))
    if not torch.cuda.is_available():
        return
    assert _supported_device(torch.empty(0, device="cuda")) == fastln.cuda_built()


def test_meta_tensors_give_shapes():
    m = fastln.LayerNorm([3, 4], device="meta")
    x = torch.randn(5, 3, 4, device="meta", requires_grad=True)
    y = m(x)
    assert y.device.type == "meta" and y.shape == x.shape


def test_unsupported_device_error_message(monkeypatch):
    import fastln.functional

    # The eager fast path calls the op before any device check; when the
    # dispatcher finds no kernel for the device (NotImplementedError), the
    # device check turns that into fastln's message. Simulated here: the op
    # without a kernel, the device without support.
    def no_kernel(*args):
        raise NotImplementedError("Could not run 'fastln::layer_norm' with arguments")

    monkeypatch.setattr(fastln.functional, "_LAYER_NORM_EAGER", no_kernel)
    monkeypatch.setattr(fastln.functional, "_supported_device", lambda input: False)
    with pytest.raises(NotImplementedError, match="fastln.layer_norm has no kernel for cpu"):
        fastln.layer_norm(torch.randn(2, 3), [3])
    # a Parameter input (the slow path) is checked before the op
    with pytest.raises(NotImplementedError, match="fastln.layer_norm has no kernel for cpu"):
        fastln.layer_norm(torch.nn.Parameter(torch.randn(2, 3)), [3])


def test_autograd_node_only_when_something_requires_grad():
    # Like torch's: no node (and no saved tensors) when nothing is differentiated.
    x, w = torch.randn(3, 8), torch.randn(8)
    for make in (lambda: fastln.layer_norm(x, [8], w), lambda: F.layer_norm(x, [8], w)):
        y = make()
        assert y.grad_fn is None and not y.requires_grad
        with torch.no_grad():
            assert make().grad_fn is None
        with torch.inference_mode():
            assert make().is_inference()
    wg = w.clone().requires_grad_()
    y = fastln.layer_norm(x, [8], wg)
    assert y.requires_grad and y.grad_fn is not None
    y.sum().backward()
    assert wg.grad is not None
    with torch.no_grad():
        assert not fastln.layer_norm(x, [8], wg).requires_grad
