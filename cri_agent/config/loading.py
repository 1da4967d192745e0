"""Where the configuration comes from, and in which order: defaults < file < environment < flags.

The YAML file (``--config``), with ``--override-file``'s ``overrides`` and
``services`` appended to its own; then ``CORAL_*`` variables (the key path
joined with ``__``, in any case: ``CORAL_DISCOVERY__KUBERNETES__RESYNCINTERVAL``);
then the flags (``flags.flags_to_settings``). ``NODE_NAME`` is read by the
model itself. Validation errors name the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from coral_base.errors import ConfigError
from cri_agent.config.layers import EnvText, Layer
from cri_agent.config.model import Settings
from cri_agent.config.validation import build_settings

ENV_PREFIX = "coral_"
ENV_NESTING = "__"
_SECTIONS = frozenset(f.name for f in fields(Settings))  # agent, discovery, ...: what a CORAL_* variable may set


def load_settings(
    config: Path | None = None,
    *,
    override_file: Path | None = None,
    flags: dict[str, Any] | None = None,
) -> Settings:
    """Merge defaults < file < env < flags and validate, or raise ConfigError."""
    settings, problems = check_settings(config, override_file=override_file, flags=flags)
    if problems:
        source = f"{config} (or CORAL_* environment)" if config else "flags/CORAL_* environment"
        raise ConfigError(f"invalid configuration in {source}: {'; '.join(problems)}")
    return settings


def check_settings(
    config: Path | None = None,
    *,
    override_file: Path | None = None,
    flags: dict[str, Any] | None = None,
) -> tuple[Settings, list[str]]:
    """The settings and every problem found, each named by its key path (``coral agent validate-config``).

    A file that cannot be read or parsed raises ConfigError: there is nothing to check.
    """
    file_data = _read_yaml(config, what="config file") if config else {}
    if override_file:
        _append_override_file(file_data, override_file)
    flags = flags or {}
    _let_flags_replace_label_maps(file_data, flags)
    return build_settings([Layer(file_data), *environment_layers(os.environ), Layer(flags)])


def environment_layers(environ: Mapping[str, str]) -> list[Layer]:
    """One layer per ``CORAL_<SECTION>[__KEY…]`` variable, the more specific above; other variables are not ours."""
    found: list[tuple[int, str, Layer]] = []
    for name, value in environ.items():
        if not name.lower().startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split(ENV_NESTING)
        if keys[0] not in _SECTIONS:
            continue  # e.g. CORAL_TOKEN, CORAL_COLONY_CA: the operator commands' variables
        tree: dict[str, object] = {keys[-1]: EnvText(value)}
        for key in reversed(keys[:-1]):
            tree = {key: tree}
        found.append((len(keys), name, Layer(tree, any_case=True)))
    return [layer for _, _, layer in sorted(found, key=lambda item: item[:2])]


def _read_yaml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found: check the path given to the agent") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: the top level must be a mapping")
    return data


def _append_override_file(file_data: dict[str, Any], override_file: Path) -> None:
    extra = _read_yaml(override_file, what="override file")
    unknown = set(extra) - {"overrides", "services"}
    if unknown:
        raise ConfigError(
            f"override file {override_file}: unexpected keys {sorted(unknown)}; "
            "it may only hold `overrides` and `services`"
        )
    for key in ("overrides", "services"):
        own, more = file_data.get(key, []), extra.get(key, [])
        if not isinstance(own, list) or not isinstance(more, list):
            raise ConfigError(f"override file {override_file}: `{key}` must be a list, here and in the config file")
        file_data[key] = [*own, *more]


def _let_flags_replace_label_maps(file_data: dict[str, Any], flags: dict[str, Any]) -> None:
    """Mappings merge across sources; a label flag must replace the file's map, not extend it."""
    flag_k8s = _child(_child(flags, "discovery"), "kubernetes")
    file_k8s = _child(_child(file_data, "discovery"), "kubernetes")
    for camel, snake in (("includeLabels", "include_labels"), ("excludeLabels", "exclude_labels")):
        if camel in flag_k8s or snake in flag_k8s:
            file_k8s.pop(camel, None)
            file_k8s.pop(snake, None)


def _child(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` if it is a mapping, else an empty one (validation reports what it is)."""
    child = data.get(key)
    return child if isinstance(child, dict) else {}
