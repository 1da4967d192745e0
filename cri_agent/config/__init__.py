"""The agent's configuration: one typed model, merged from several sources (docs/configuration.md).

``model``: the frozen settings; ``validation``: checked input to the model,
problems named by key; ``loading``: the sources and their precedence
(defaults < YAML file < ``CORAL_*`` environment < flags); ``flags``: the
command-line flags as a source. No pydantic: the agent stays lean.
"""

from cri_agent.config.flags import flags_to_settings
from cri_agent.config.loading import load_settings
from cri_agent.config.model import (
    AgentSection,
    CacheSettings,
    ColonySettings,
    CriSettings,
    DiscoverySettings,
    KubernetesDiscovery,
    LogSettings,
    OpsSettings,
    Settings,
)

__all__ = [
    "AgentSection",
    "CacheSettings",
    "ColonySettings",
    "CriSettings",
    "DiscoverySettings",
    "KubernetesDiscovery",
    "LogSettings",
    "OpsSettings",
    "Settings",
    "flags_to_settings",
    "load_settings",
]
