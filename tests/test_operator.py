"""The vocabulary operator T on hand-worked cases (pure tensors, no tokenizers)."""

import pytest
import torch

from lep_plugin.math.operator import apply_operator, build_operator, trained_rows


def test_mean_and_position_weights():
    pieces = [[0], [1, 2], [], [3, 3, 1]]
    mean = torch.tensor([[1, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0], [0] * 5, [0, 1 / 3, 0, 2 / 3, 0]], dtype=torch.float64)
    position = torch.tensor(
        [[1, 0, 0, 0, 0], [0, 1 / 3, 2 / 3, 0, 0], [0] * 5, [0, 0.5, 0, 0.5, 0]], dtype=torch.float64
    )
    torch.testing.assert_close(build_operator(pieces, 5).to_dense(), mean)
    torch.testing.assert_close(build_operator(pieces, 5, "position").to_dense(), position)


def test_untrained_rows_are_skipped_and_empty_rows_get_the_trained_mean():
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [0.0, 0.0]])  # row 3 never trained
    operator = build_operator([[0, 1], [3], [3, 2], [], [1]], 4)
    new = apply_operator(operator, old)
    trained_mean = old[:3].mean(0)
    assert new.tolist() == [[0.5, 1.0], trained_mean.tolist(), [4.0, 4.0], trained_mean.tolist(), [0.0, 2.0]]


def test_dtype_is_kept_and_ids_are_checked():
    old = torch.randn(6, 3).to(torch.bfloat16)
    assert apply_operator(build_operator([[0, 5]], 6), old).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        build_operator([[6]], 6)
    with pytest.raises(ValueError):
        apply_operator(build_operator([[0]], 5), old)


def test_trained_rows_threshold():
    matrix = torch.ones(5, 4)
    matrix[1] = 1e-6
    matrix[3] = 0
    assert trained_rows(matrix).tolist() == [True, False, True, False, True]
