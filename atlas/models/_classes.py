"""Class names: ImageNet's from torchvision's bundled metadata (no download), generic otherwise."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["imagenet_class_names", "class_names_for"]


@lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (0 = tench)."""
    return list(_imagenet())


def class_names_for(num_classes: int) -> list[str]:
    """ImageNet names for a 1000-way output, else ``"class 0"``, ``"class 1"``, ..."""
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]
