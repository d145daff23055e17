"""Conditioning changes are found by version and content, never by id()."""

from __future__ import annotations

import torch

from asyncvid.engine.conditioning import ConditioningVersion


def test_same_tensor_is_unchanged_and_an_in_place_write_is_a_change():
    v = ConditioningVersion()
    ehs = torch.ones(2, 3)
    assert v.update({"ehs": ehs, "scale": 1.0}) is True
    assert v.update({"ehs": ehs, "scale": 1.0}) is False
    ehs.mul_(2)
    assert v.update({"ehs": ehs, "scale": 1.0}) is True
    assert v.update({"ehs": ehs, "scale": 0.5}) is True
    assert v.version == 3


def test_rebuilt_tensor_with_new_values_is_a_change_even_under_a_reused_id():
    v = ConditioningVersion()
    v.update({"ehs": torch.zeros(64)})
    changes = 0
    for step in range(1, 20):
        # each step a fresh tensor of the same shape; CPython is free to hand it the freed one's id
        changes += v.update({"ehs": torch.full((64,), float(step))})
    assert changes == 19


def test_rebuilt_tensor_with_equal_values_is_not_a_change():
    v = ConditioningVersion()
    v.update({"ehs": torch.arange(6.0), "ids": None})
    assert v.update({"ehs": torch.arange(6.0), "ids": None}) is False
    assert v.update({"ehs": torch.arange(6.0).to(torch.float64), "ids": None}) is True  # dtype matters
    assert v.update({"ehs": torch.arange(6.0), "ids": torch.zeros(1)}) is True  # structure matters
