"""Class names: ImageNet's from torchvision's bundled metadata (no download), a file of the user's
(``model.class_names``), generic otherwise."""

from __future__ import annotations

from pathlib import Path

from .._cache import cached

__all__ = ["imagenet_class_names", "class_names_for", "read_class_names"]


def _imagenet() -> tuple[str, ...]:
    """torchvision's bundled ImageNet-1k class names (read once per process and torchvision version)."""
    import torchvision
    from torchvision.models import ResNet50_Weights

    return cached("models.imagenet_classes", torchvision.__version__,
                  lambda: tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"]))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (0 = tench)."""
    return list(_imagenet())


def class_names_for(num_classes: int) -> list[str]:
    """ImageNet names for a 1000-way output, else ``"class 0"``, ``"class 1"``, ..."""
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


def read_class_names(path: str | Path, num_classes: int, model_name: str) -> list[str]:
    """The class names in ``path`` (``model.class_names``): one name a line, in class-index order.

    Blank lines at the end are ignored; the count must equal the network's ``num_classes``
    (ModelError naming the file and both counts otherwise).
    """
    from ._network import ModelError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"model.class_names={path} does not exist; set it to a text file with one class name a line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read model.class_names={path} ({e}); it must be a UTF-8 text file, one class name a line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if num_classes == 0:
        raise ModelError(f"model.class_names={path} names {len(names)} classes but `{model_name}` has no classifier "
                         "(its output is not class logits); unset model.class_names")
    if len(names) != num_classes:
        raise ModelError(f"model.class_names={path} has {len(names)} lines but `{model_name}` outputs {num_classes} classes; "
                         f"give one name a line, {num_classes} lines in class-index order")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ModelError(f"model.class_names={path}: line {empty[0] + 1} is empty; give every class a name")
    return names
