"""One small generic registry, used for datasets, models and tasks.

Example:
    >>> MODELS = Registry[Callable[..., nn.Module]]("model")
    >>> @MODELS.register("cnn", summary="Configurable CNN")
    ... def cnn(*, num_classes: int, in_channels: int) -> nn.Module: ...
    >>> MODELS.get("cnn")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torchkiln.core.errors import RegistryError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    summary: str


class Registry(Generic[T]):
    """A name -> object mapping with did-you-mean errors.

    Args:
        kind: what the registry holds ("model", "dataset", "task"); used in messages and
            in the hint ``Run 'kiln list <kind>s'``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str = "") -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``. Registering a name twice is an error."""

        def deco(obj: T) -> T:
            self.add(name, obj, summary=summary)
            return obj

        return deco

    def add(self, name: str, obj: T, *, summary: str = "") -> None:
        if name in self._entries:
            raise RegistryError(
                f"The {self.kind} '{name}' is registered twice. Each name must be unique; rename one of them."
            )
        if not summary:
            doc = inspect.getdoc(obj) or ""
            summary = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, obj, summary)

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            RegistryError: the name is unknown; the message lists close matches.
        """
        try:
            return self._entries[name].obj
        except KeyError:
            raise RegistryError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, self._entries)} "
                f"Run 'kiln list {self.kind}s' to see all of them."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


def check_kwargs(
    func: Callable[..., Any], kwargs: dict[str, Any], *, what: str, exclude: Collection[str] = ()
) -> None:
    """Reject keyword arguments that ``func`` does not take, with a did-you-mean hint.

    ``exclude`` names keyword arguments the caller supplies itself, so they are not offered.
    """
    params = inspect.signature(func).parameters
    allowed = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in exclude]
    for key in kwargs:
        if key not in allowed:
            raise RegistryError(
                f"{what} has no parameter '{key}'.{did_you_mean(key, allowed)} "
                f"Valid parameters: {', '.join(allowed) or 'none'}."
            )
