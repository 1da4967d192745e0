"""Checked input to the typed model: every key read, every value checked, every problem named.

The sources are layers, lowest precedence first (the file, each ``CORAL_*``
variable, the flags). A key takes its value from the highest layer that sets
it, except mappings (a section, a label map), which merge key by key; a
value that is not a mapping hides the layers below it. Keys are written in
camelCase or snake_case; the environment's in any case. A string from the
environment where a section, a list or a mapping is expected is read as JSON.

Problems are collected, each as ``key.path: what is wrong``, in the order of
the model's fields, unknown keys last, so that one run names them all.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from coral_base.durations import parse_duration
from coral_base.errors import ConfigError
from cri_agent.config.model import (
    AgentMode,
    AgentSection,
    CacheSettings,
    ColonySettings,
    CriSettings,
    DiscoverySettings,
    KubernetesApi,
    KubernetesDiscovery,
    LogFormat,
    LogLevel,
    LogSettings,
    OpsSettings,
    Settings,
)
from cri_agent.discovery.rules import ExplicitService, HealthSpec, OverrideRule, Selector, ServiceSpec
from cri_agent.model import Transport

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class Invalid(ValueError):
    """One value's problem; the reader prefixes it with the key."""


class EnvText(str):
    """A ``CORAL_*`` variable's text: JSON where a section, a list or a mapping is expected."""

    __slots__ = ()


# -- one value ----------------------------------------------------------------------------------------------------

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INTEGER = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?", re.ASCII)


def text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("Input should be a valid string")
    return str(value)


def boolean(value: object) -> bool:
    """true/false, 1/0, or (as written in the environment) on/off, yes/no, t/f, y/n in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() in _TRUE or value.lower() in _FALSE:
            return value.lower() in _TRUE
        raise Invalid("Input should be a valid boolean, unable to interpret input")
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, int):
        raise Invalid("Input should be a valid boolean, unable to interpret input")
    raise Invalid("Input should be a valid boolean")


def integer(*, ge: int | None = None, le: int | None = None) -> Callable[[object], int]:
    """A whole number (``3``, ``3.0``, ``"3"``), within [ge, le]."""

    def check(value: object) -> int:
        if isinstance(value, int):  # bool included: true is 1, as before
            number = int(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise Invalid("Input should be a finite number")
            if not value.is_integer():
                raise Invalid("Input should be a valid integer, got a number with a fractional part")
            number = int(value)
        elif isinstance(value, str):
            if not _INTEGER.fullmatch(value.strip()):
                raise Invalid("Input should be a valid integer, unable to parse string as an integer")
            number = int(value.strip().partition(".")[0])
        else:
            raise Invalid("Input should be a valid integer")
        return _within(number, ge=ge, le=le)

    return check


def number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            if value.isascii():
                return float(value)
        except ValueError:
            pass
        raise Invalid("Input should be a valid number, unable to parse string as a number")
    raise Invalid("Input should be a valid number")


def positive(check: Callable[[object], float]) -> Callable[[object], float]:
    def checked(value: object) -> float:
        result = check(value)
        if not result > 0:  # NaN too
            raise Invalid("Input should be greater than 0")
        return result

    return checked


def duration(value: object) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` or seconds (coral_base.durations); a number is taken as is."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise Invalid(f"Value error, {exc}") from None
    return number(value)


def path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    raise Invalid("Input should be a path (a string)")


def choice(kind: type[E]) -> Callable[[object], E]:
    """One of an enum's values, exactly as written in the docs (``off``, not ``OFF``)."""

    def check(value: object) -> E:
        for member in kind:
            if isinstance(value, str) and value == member.value:
                return member
        raise Invalid(f"Input should be {_one_of([repr(m.value) for m in kind])}")

    return check


def transport(value: object) -> Transport:
    if value == "TCP":
        return "TCP"
    if value == "UDP":
        return "UDP"
    raise Invalid("Input should be 'TCP' or 'UDP'")


def optional(check: Callable[[object], T]) -> Callable[[object], T | None]:
    def checked(value: object) -> T | None:
        return None if value is None else check(value)

    return checked


def parse_label_pairs(pairs: Sequence[str], *, key: str) -> list[tuple[str, str]]:
    """``["app=payments-api"]`` -> ``[("app", "payments-api")]``, or ConfigError naming ``key``."""
    parsed = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{key}: {pair!r} is not key=value (e.g. app=payments-api)")
        parsed.append((name.strip(), value.strip()))
    return parsed


def _within(number: int, *, ge: int | None, le: int | None) -> int:
    if ge is not None and number < ge:
        raise Invalid(f"Input should be greater than or equal to {ge}")
    if le is not None and number > le:
        raise Invalid(f"Input should be less than or equal to {le}")
    return number


def _one_of(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


# -- one section, over the layers ----------------------------------------------------------------------------------


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
        found = self._top(name, decode=True)
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

    def items(self, name: str) -> Iterator[Section]:
        """A list of sections (the highest layer's), one Section per entry."""
        found = self._top(name, decode=True)
        if found is _ABSENT:
            return
        if not isinstance(found, list | tuple):
            self._problem(name, "Input should be a valid list")
            return
        for index, item in enumerate(found):
            if isinstance(item, Mapping):
                yield Section(f"{self._key(name)}.{index}", [Layer(item)], self.problems)
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

    def _top(self, name: str, *, decode: bool = False) -> object:
        """The highest layer's value for ``name``, or _ABSENT; ``decode``: environment text is JSON."""
        found: object = _ABSENT
        for index, layer in enumerate(self.layers):
            value = self._find(index, layer, name)
            if value is not _ABSENT:
                found = self._decoded(name, value) if decode else value
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


# -- the model, section by section ---------------------------------------------------------------------------------


def build_settings(layers: Sequence[Layer]) -> tuple[Settings, list[str]]:
    """The settings the layers describe, and the problems found (none: the settings are valid)."""
    problems: list[str] = []
    root = Section("", layers, problems)
    settings = root.done(
        Settings(
            agent=_agent(root.section("agent")),
            discovery=_discovery(root.section("discovery")),
            overrides=tuple(_override(entry, index) for index, entry in enumerate(root.items("overrides"))),
            services=tuple(_explicit_service(entry) for entry in root.items("services")),
            cache=_cache(root.section("cache")),
            colony=_colony(root.section("colony")),
            ops=_ops(root.section("ops")),
            log=_log(root.section("log")),
        )
    )
    return settings, problems


def _agent(s: Section) -> AgentSection:
    d = AgentSection()
    return s.done(
        AgentSection(
            mode=s.value("mode", choice(AgentMode), d.mode),
            id=s.value("id", text, d.id),
            node_name=s.value("node_name", text, d.node_name),
        )
    )


def _discovery(s: Section) -> DiscoverySettings:
    d = DiscoverySettings()
    return s.done(
        DiscoverySettings(
            cri=_cri(s.section("cri")),
            kubernetes=_kubernetes(s.section("kubernetes")),
            proc_root=s.value("proc_root", path, d.proc_root),
            health_interval=s.value("health_interval", duration, d.health_interval),
            health_timeout=s.value("health_timeout", duration, d.health_timeout),
            health_concurrency=s.value("health_concurrency", integer(ge=1, le=1024), d.health_concurrency),
            coalesce_interval=s.value("coalesce_interval", duration, d.coalesce_interval),
        )
    )


def _cri(s: Section) -> CriSettings:
    d = CriSettings()
    return s.done(
        CriSettings(
            socket=s.value("socket", path, d.socket),
            events=s.value("events", boolean, d.events),
            containerd_namespace=s.value("containerd_namespace", text, d.containerd_namespace),
            timeout=s.value("timeout", duration, d.timeout),
        )
    )


def _kubernetes(s: Section) -> KubernetesDiscovery:
    d = KubernetesDiscovery()
    return s.done(
        KubernetesDiscovery(
            include_namespaces=s.strings("include_namespaces"),
            exclude_namespaces=s.strings("exclude_namespaces"),
            include_labels=s.mapping("include_labels"),
            exclude_labels=s.mapping("exclude_labels"),
            poll_interval=s.value("poll_interval", positive(duration), d.poll_interval),
            resync_interval=s.value("resync_interval", duration, d.resync_interval),
            api=s.value("api", choice(KubernetesApi), d.api),
            kubeconfig=s.value("kubeconfig", optional(path), d.kubeconfig),
            forbidden_retry_interval=s.value(
                "forbidden_retry_interval", positive(duration), d.forbidden_retry_interval
            ),
        )
    )


def _health(s: Section) -> HealthSpec:
    return s.done(
        HealthSpec(
            endpoint=s.value("endpoint", optional(text), None),
            interval_s=s.value("interval", optional(duration), None),
        )
    )


def _selector(s: Section) -> Selector:
    return s.done(
        Selector(
            namespace=s.value("namespace", optional(text), None),
            pod_labels=s.value("pod_label", _pod_labels, {}),
            pod_name=s.value("pod_name", optional(text), None),
            container=s.value("container", optional(text), None),
        )
    )


def _pod_labels(value: object) -> dict[str, str]:
    """``podLabel``: ``app=payments-api``, or a mapping of labels."""
    if value is None:
        return {}
    if isinstance(value, str):
        name, sep, label = value.partition("=")
        if not sep or not name.strip():
            raise Invalid(f"{str(value)!r} is not key=value (e.g. app=payments-api)")
        return {name.strip(): label.strip()}
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return {str(k): str(v) for k, v in value.items()}
    raise Invalid("Input should be key=value (e.g. app=payments-api) or a mapping of strings")


def _override(s: Section, index: int) -> OverrideRule:
    return s.done(
        OverrideRule(
            selector=_selector(s.section("selector", required=True)),
            service=_service(s.section("service", required=True)),
            source=f"overrides[{index}]",
        )
    )


def _service(s: Section) -> ServiceSpec:
    return s.done(
        ServiceSpec(
            name=s.value("name", optional(text), None),
            type=s.value("type", optional(text), None),
            port=s.value("port", optional(integer(ge=1, le=65535)), None),
            health=_health(s.section("health")),
        )
    )


def _explicit_service(s: Section) -> ExplicitService:
    return s.done(
        ExplicitService(
            name=s.value("name", text, "", required=True),
            port=s.value("port", optional(integer(ge=1, le=65535)), None),
            protocol=s.value("protocol", transport, "TCP"),
            type=s.value("type", text, ""),
            namespace=s.value("namespace", text, ""),
            selector=_selector(s.section("selector")) if s.given("selector") else None,
            health=_health(s.section("health")),
            labels=s.mapping("labels"),
        )
    )


def _cache(s: Section) -> CacheSettings:
    d = CacheSettings()
    return s.done(
        CacheSettings(
            path=s.value("path", path, d.path),
            event_retention_rows=s.value("event_retention_rows", integer(ge=100), d.event_retention_rows),
            event_retention_days=s.value("event_retention_days", positive(number), d.event_retention_days),
        )
    )


def _colony(s: Section) -> ColonySettings:
    d = ColonySettings()
    return s.done(
        ColonySettings(
            address=s.value("address", text, d.address),
            colony_id=s.value("colony_id", text, d.colony_id),
            secret=s.value("secret", text, d.secret),
            secret_file=s.value("secret_file", optional(path), d.secret_file),
            heartbeat_interval=s.value("heartbeat_interval", duration, d.heartbeat_interval),
            max_backoff=s.value("max_backoff", positive(duration), d.max_backoff),
            timeout=s.value("timeout", duration, d.timeout),
            ca_file=s.value("ca_file", optional(path), d.ca_file),
            insecure=s.value("insecure", boolean, d.insecure),
        )
    )


def _ops(s: Section) -> OpsSettings:
    d = OpsSettings()
    return s.done(
        OpsSettings(
            observe_only=s.value("observe_only", boolean, d.observe_only),
            default_duration=s.value("default_duration", positive(duration), d.default_duration),
            max_duration=s.value("max_duration", positive(duration), d.max_duration),
            max_concurrent=s.value("max_concurrent", integer(ge=1), d.max_concurrent),
            rate_per_minute=s.value("rate_per_minute", integer(ge=1), d.rate_per_minute),
            max_bytes=s.value("max_bytes", integer(ge=1), d.max_bytes),
            max_packets=s.value("max_packets", integer(ge=1), d.max_packets),
            max_frequency_hz=s.value("max_frequency_hz", integer(ge=1, le=999), d.max_frequency_hz),
            nice=s.value("nice", integer(ge=0, le=19), d.nice),
        )
    )


def _log(s: Section) -> LogSettings:
    d = LogSettings()
    return s.done(
        LogSettings(
            format=s.value("format", choice(LogFormat), d.format),
            level=s.value("level", choice(LogLevel), d.level),
        )
    )
