"""The simulated second device (tests/simdevice.py) enforces what CUDA enforces, and computes what the CPU does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from simdevice import SIM, SimTensor, is_on, simulated_device
from torch import nn


def test_moves_compute_and_come_back_exactly():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with simulated_device():
        d = x.to(SIM)
        assert isinstance(d, SimTensor) and d.device == SIM and not is_on(d.device, "cpu")
        y = (d @ d.T).relu() + 1
        assert y.device == SIM and torch.equal(y.cpu(), (x @ x.T).relu() + 1)
        assert type(y.cpu()) is torch.Tensor and y.cpu().device == torch.device("cpu")
        assert d.sum().item() == pytest.approx(float(x.sum())) and d.tolist() == x.tolist()


def test_mixing_devices_and_numpy_fail_as_on_cuda():
    with simulated_device():
        d = torch.ones(3).to(SIM)
        with pytest.raises(RuntimeError, match="same device"):
            d + torch.ones(3)                             # a CPU tensor made without device=
        assert torch.equal((d + torch.tensor(2.0)).cpu(), torch.full((3,), 3.0))   # 0-dim CPU: a scalar
        with pytest.raises((RuntimeError, TypeError)):
            d.numpy()
        with pytest.raises((RuntimeError, TypeError)):
            np.asarray(d)
        assert torch.equal(d[torch.tensor([0, 2])].cpu(), torch.ones(2))           # CPU indices are allowed


def test_factories_and_models_follow_the_device():
    with simulated_device():
        for t in (torch.zeros(2, device=SIM), torch.tensor([1.0, 2.0], device=SIM),
                  torch.as_tensor([1.0], device=SIM), torch.arange(3, device=SIM)):
            assert t.device == SIM
        lin = nn.Linear(3, 2)
        ref = lin(torch.ones(1, 3))
        lin.to(SIM)
        assert all(p.device == SIM and isinstance(p, nn.Parameter) for p in lin.parameters())
        out = lin(torch.ones(1, 3, device=SIM))
        assert torch.allclose(out.cpu(), ref)
        out.sum().backward()                              # autograd works; gradients live on the device
        assert lin.weight.grad.device == SIM and torch.allclose(lin.weight.grad.cpu(), torch.ones(2, 3))
        lin.load_state_dict(nn.Linear(3, 2).state_dict())  # copy_ from the CPU, as CUDA allows
        assert lin.weight.device == SIM


def test_is_on():
    assert is_on(torch.device("cuda", 0), "cuda") and is_on(torch.device("cpu"), "cpu")
    assert not is_on(SIM, "cpu") and is_on(SIM, SIM) and not is_on(torch.device("cuda", 1), "cuda")


def test_indexing_generators_and_in_place_resizes_follow_cuda():
    with simulated_device():
        d = torch.arange(5.0).to(SIM)
        with pytest.raises(RuntimeError, match="indices should be either on cpu or on the same device"):
            torch.arange(5.0)[torch.tensor([0, 1]).to(SIM)]          # device indices into a CPU tensor
        d[torch.tensor([0, 1])] = torch.tensor(7.0)                  # CPU indices, 0-dim CPU value: allowed
        assert d.cpu().tolist() == [7.0, 7.0, 2.0, 3.0, 4.0]
        with pytest.raises(RuntimeError, match="same device"):
            d[torch.tensor([0, 1])] = torch.ones(2)                  # a CPU value tensor: refused
        g = torch.Generator().manual_seed(0)
        with pytest.raises(RuntimeError, match="generator"):
            torch.randint(5, (3,), generator=g, device=SIM)
        with pytest.raises(RuntimeError, match="generator"):
            torch.multinomial(d, 1, generator=g)
        assert d.new_tensor([1.0, 2.0]).device == SIM
        with pytest.raises(NotImplementedError, match="in place"):
            d.unsqueeze_(0)
