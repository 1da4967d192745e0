"""Reading a section of the configuration from its sources, lowest precedence first.

Each source is a layer: the file, each ``CORAL_*`` variable (more specific
ones higher), the flags. A key takes its value from the highest layer that
sets it, except mappings (a section, a label map), which merge key by key; a
value that is not a mapping hides the layers below it. Keys are written in
camelCase or snake_case; the environment's in any case. A string from the
environment where a section, a list or a mapping is expected is read as JSON.
Problems are collected as ``key.path: what is wrong``, keys as the source
spells them; unknown keys are reported when the section is ``done``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cri_agent.config.values import Invalid, text

T = TypeVar("T")


class EnvText(str):
    """A ``CORAL_*`` variable's text: JSON where a section, a list or a mapping is expected."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Layer:
    """One source's mapping at one place in the tree; the environment's keys match in any case."""

    data: Mapping[Any, object]
    any_case: bool = False


_ABSENT = object()


class Section:
    """A section's keys, read one field at a time from its layers; ``done`` reports the keys no field read."""

    def __init__(self, path: str, layers: Sequence[Layer], problems: list[str]) -> None:
        self.path = path
        self.layers = layers
        self.problems = problems
        self._fields: list[str] = []  # camelCase, in reading order
        self._read: set[tuple[int, object]] = set()  # (layer index, key as given)
        self._spelled: dict[str, str] = {}  # field -> its key as the highest layer spells it, for messages

    def value(self, name: str, check: Callable[[object], T], default: T, *, required: bool = False) -> T:
        """A scalar: the highest layer's value, checked."""
        found = self._top(name)
        if found is _ABSENT:
            if required:
                self._problem(name, "Field required")
            return default
        try:
            return check(found)
        except Invalid as exc:
            self._problem(name, str(exc))
            return default

    def strings(self, name: str) -> tuple[str, ...]:
        """A list of strings (the highest layer's)."""
        found = self._decoded(name, self._top(name))
        if found is _ABSENT:
            return ()
        if not isinstance(found, list | tuple | set | frozenset):
            self._problem(name, "Input should be a valid list")
            return ()
        checked = []
        for index, item in enumerate(found):
            try:
                checked.append(text(item))
            except Invalid as exc:
                self._problem(f"{name}.{index}", str(exc))
        return tuple(checked)

    def mapping(self, name: str) -> dict[str, str]:
        """A string-to-string map; the layers' maps merge, the higher one winning a key."""
        merged: dict[str, str] = {}
        for layer in self._stack(name):
            for key, item in layer.data.items():
                if not isinstance(key, str):
                    self._problem(f"{name}.{key}.[key]", "Input should be a valid string")
                    continue
                try:
                    merged[key] = text(item)
                except Invalid as exc:
                    self._problem(f"{name}.{key}", str(exc))
        return merged

    def section(self, name: str, *, required: bool = False) -> Section:
        """A nested section; with no layer (the key is not given) every field takes its default."""
        if required and self._top(name) is _ABSENT:
            self._problem(name, "Field required")
        return Section(self._key(name), self._stack(name), self.problems)

    def given(self, name: str) -> bool:
        """Whether a layer sets ``name`` to something other than null."""
        found = self._top(name)
        return found is not _ABSENT and found is not None

    def items(self, name: str) -> Iterator[tuple[int, Section]]:
        """A list of sections (the highest layer's): each entry's index and Section."""
        found = self._decoded(name, self._top(name))
        if found is _ABSENT:
            return
        if not isinstance(found, list | tuple):
            self._problem(name, "Input should be a valid list")
            return
        for index, item in enumerate(found):
            if isinstance(item, Mapping):
                yield index, Section(f"{self._key(name)}.{index}", [Layer(item)], self.problems)
            else:
                self._problem(f"{name}.{index}", "Input should be a valid dictionary")

    def done(self, result: T) -> T:
        """Report the keys no field read (each once), then hand back what the section built."""
        unknown: dict[str, None] = {}
        for index, layer in enumerate(self.layers):
            for key in layer.data:
                if (index, key) not in self._read:
                    unknown[str(key)] = None
        for key in unknown:
            self.problems.append(f"{self._at(key)}: unknown key (expected one of: {', '.join(self._fields)})")
        return result

    # -- finding a key in the layers --

    def _top(self, name: str) -> object:
        """The highest layer's value for ``name``, or _ABSENT."""
        found: object = _ABSENT
        for index, layer in enumerate(self.layers):
            value = self._find(index, layer, name)
            found = found if value is _ABSENT else value
        return found

    def _stack(self, name: str) -> list[Layer]:
        """The mappings that merge into ``name``, lowest first; a non-mapping hides those below it."""
        stack: list[Layer] = []
        hidden = False
        for index, layer in enumerate(self.layers):
            value = self._decoded(name, self._find(index, layer, name))
            if isinstance(value, Mapping):
                stack = [] if hidden else stack
                stack.append(Layer(value, layer.any_case))
                hidden = False
            elif value is not _ABSENT:
                stack, hidden = [], True
        if hidden:
            self._problem(name, "Input should be a valid dictionary")
        return stack

    def _find(self, index: int, layer: Layer, name: str) -> object:
        """``name``'s value in one layer (camelCase or snake_case key), or _ABSENT."""
        camel = _camel(name)
        if camel not in self._fields:
            self._fields.append(camel)
        spellings = {camel, name}
        if layer.any_case:
            keys = [k for k in layer.data if isinstance(k, str) and k.lower() in {s.lower() for s in spellings}]
        else:
            keys = [k for k in layer.data if k in spellings]
        if not keys:
            return _ABSENT
        self._spelled[name] = camel if keys[0].lower() == camel.lower() else name
        if (index, keys[0]) not in self._read and len(keys) > 1:
            self._problem(name, f"given twice, as {' and '.join(keys)}: keep one")
        self._read.update((index, key) for key in keys)
        return layer.data[keys[0]]

    def _decoded(self, name: str, value: object) -> object:
        """Where a section, a list or a mapping is expected: environment text is JSON."""
        if not isinstance(value, EnvText):
            return value
        try:
            decoded: object = json.loads(value)
        except ValueError:
            example = '["a", "b"] or {"k": "v"}'
            self._problem(name, f"{str(value)!r} from the environment is not JSON (e.g. {example})")
            return _ABSENT
        return decoded

    def _key(self, name: str) -> str:
        return self._at(self._spelled.get(name, _camel(name)))

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _problem(self, name: str, message: str) -> None:
        head, dot, rest = name.partition(".")
        self.problems.append(f"{self._key(head)}{dot}{rest}: {message}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
