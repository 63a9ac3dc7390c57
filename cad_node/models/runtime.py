"""Where and how a network runs: the device, and the context every inference runs in.

The same code runs on a GPU and on the CPU.  On CUDA the network runs under
float16 autocast (about twice as fast, half the memory); on the CPU nothing
changes, so CPU results are exactly those of plain float32 evaluation.

Example::

    device = default_device()
    net = load_network(folder, manifest, device, build)
    with inference(device):
        logits = net(images.to(device))
    probabilities = torch.sigmoid(logits.float()).cpu()
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

AUTOCAST_DTYPE = torch.float16
"""Autocast precision on CUDA (every CUDA GPU has fast float16; bfloat16 needs Ampere)."""


def default_device() -> str:
    """ "cuda" when a GPU is usable, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_cuda(device: str) -> bool:
    """Whether ``device`` ("cuda", "cuda:1", "cpu" ...) names a CUDA GPU."""
    return torch.device(device).type == "cuda"


def set_cpu_threads(threads: int) -> None:
    """Threads torch uses for one CPU operator, in this process (config ``torch_threads``).

    On a CPU shared with other work (several workers, ingest), fewer threads than
    cores avoid oversubscription, which slows torch far more than it speeds it up.
    """
    if threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextmanager
def inference(device: str) -> Iterator[None]:
    """No autograd (``torch.inference_mode``), plus float16 autocast on CUDA.

    Outputs made inside may be float16 on CUDA: call ``.float()`` before
    thresholds or NumPy.  Grad-CAM needs gradients, so it runs outside this
    context.
    """
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if is_cuda(device):
            stack.enter_context(torch.autocast("cuda", dtype=AUTOCAST_DTYPE))
        yield


__all__ = ["AUTOCAST_DTYPE", "default_device", "inference", "is_cuda", "set_cpu_threads"]
