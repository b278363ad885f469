"""The label-free codes: a segment's features are its mean residual followed by the next segment's."""

import torch

from internal_rl.analysis.label_free_codes import segment_features


def test_segment_features_are_means_with_the_next_segments_mean():
    residual = torch.tensor([[[0.0, 2.0], [2.0, 4.0], [10.0, 0.0], [20.0, 0.0], [5.0, 5.0], [9.0, 9.0]],
                             [[1.0, 1.0], [3.0, 3.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    segments = torch.tensor([[0, 0, 1, 1, 2, -1], [0, 0, -1, -1, -1, -1]])  # -1: padding
    mean, count = segment_features(residual, segments, lookahead=False)
    torch.testing.assert_close(mean[0], torch.tensor([[1.0, 3.0], [15.0, 0.0], [5.0, 5.0]]))
    torch.testing.assert_close(count, torch.tensor([[2.0, 2.0, 1.0], [2.0, 0.0, 0.0]]))
    ahead, _ = segment_features(residual, segments)
    torch.testing.assert_close(ahead[0], torch.tensor([[1.0, 3.0, 15.0, 0.0], [15.0, 0.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]]))
    torch.testing.assert_close(ahead[1, 0], torch.tensor([2.0, 2.0, 2.0, 2.0]))  # an episode's last segment repeats itself
