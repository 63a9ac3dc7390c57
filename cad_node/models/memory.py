"""What a loaded model holds in memory, measured with torch's own counters.

On a GPU: the bytes ``torch.cuda.memory_allocated`` grew by while the model loaded.
On the CPU (no allocator counter): the bytes of the parameters and buffers of the
networks the model holds. The lanes' budgets (``queue.lanes.*.memory_mb``) are
checked against it at start-up.
"""

from collections.abc import Callable, Iterator
from typing import Any

_MAX_DEPTH = 3
"""How deep :func:`held_modules` looks into a model's attributes for networks."""


def held_modules(holder: object, depth: int = 0) -> Iterator[Any]:
    """Every ``torch.nn.Module`` among ``holder``'s attributes (and theirs, a few levels down)."""
    from torch import nn

    if depth > _MAX_DEPTH:
        return
    attributes = getattr(holder, "__dict__", None)
    if not isinstance(attributes, dict):
        return
    for value in attributes.values():
        if isinstance(value, nn.Module):
            yield value
        elif not isinstance(value, str | bytes | int | float | type(None)):
            yield from held_modules(value, depth + 1)


def tensor_bytes(holder: object) -> int:
    """Bytes of the distinct parameters and buffers of the networks ``holder`` holds."""
    seen: set[int] = set()
    total = 0
    for module in held_modules(holder):
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def measured_load(device: str, load: Callable[[], object]) -> tuple[object, int]:
    """``load()``'s model and its bytes: the CUDA allocator's growth during the load on a
    GPU (its networks' tensor bytes when it was loaded already), else its tensor bytes."""
    import torch

    from cad_node.models.runtime import is_cuda

    if not is_cuda(device):
        model = load()
        return model, tensor_bytes(model)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    model = load()
    torch.cuda.synchronize(device)
    grown = torch.cuda.memory_allocated(device) - before
    return model, grown if grown > 0 else tensor_bytes(model)
