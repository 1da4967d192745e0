"""One mapping between a vocabulary enum and its protobuf enum, by name.

``Action.TAP`` is ``OPERATION_ACTION_TAP`` on the wire: the protobuf name is
the prefix plus the member's name, checked for every member when the
mapping is built (at import), so a word added to one side only fails every
test at once instead of one peer at run time.

Earlier versions sent these sets as strings, and still-deployed peers read
and write only those. So the codecs write both, and read the enum first and
the string when the enum is UNSPECIFIED (0): the sender is older.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, Protocol, TypeVar

W = TypeVar("W", bound=StrEnum)
V = TypeVar("V", bound=int)


class _EnumType(Protocol[V]):
    """What the generated ``EnumTypeWrapper`` of a protobuf enum offers."""

    def Value(self, name: str) -> V: ...

    def values(self) -> list[V]: ...


class WireEnum(Generic[W, V]):
    def __init__(self, words: type[W], wire: _EnumType[V], prefix: str) -> None:
        self.words = words
        self._to_wire = {word: wire.Value(prefix + word.name) for word in words}
        self._from_wire: dict[int, W] = {number: word for word, number in self._to_wire.items()}
        self._unset = next(number for number in wire.values() if number == 0)
        unmatched = [number for number in wire.values() if number and number not in self._from_wire]
        if unmatched:
            raise ValueError(f"{words.__name__} has no member for {prefix}* numbers {unmatched}")

    def encode(self, word: W | None) -> V:
        """The wire number; 0 (UNSPECIFIED) for None."""
        return self._unset if word is None else self._to_wire[word]

    def decode(self, number: int, word: str = "") -> W | None:
        """The member for ``number``, else for the older peer's ``word``, else None."""
        found = self._from_wire.get(number) if number else None  # 0: unset, an older sender
        if found is not None:
            return found
        try:
            return self.words(word)
        except ValueError:
            return None
