"""How close one video is to another (PSNR and SSIM, from scikit-image): what the delta calibration keeps and
the quality runs report. Product code (the calibrations need it), apart from the task's evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_video_array(video: Any) -> np.ndarray:
    """[F, H, W, 3] float in [0, 1] from a numpy array, a torch tensor, or a list of PIL images/arrays."""
    if isinstance(video, list):
        video = np.stack([np.asarray(f) for f in video])
    if hasattr(video, "detach"):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.dtype == np.uint8:
        video = video.astype(np.float32) / 255.0
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video of shape [frames, height, width, 3], got {tuple(video.shape)}")
    return video.astype(np.float32)


def fidelity(video: Any, reference: Any) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of ``video`` against ``reference`` (scikit-image; SSIM averaged over frames)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = as_video_array(video), as_video_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"the two videos differ in shape: {a.shape} and {b.shape}")
    psnr = float(peak_signal_noise_ratio(b, a, data_range=1.0)) if not np.array_equal(a, b) else float("inf")
    ssim = float(
        np.mean([structural_similarity(b[i], a[i], data_range=1.0, channel_axis=-1) for i in range(a.shape[0])])
    )
    return psnr, ssim
