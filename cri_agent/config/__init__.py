"""The agent's configuration: one typed model, merged from several sources (docs/configuration.md).

``model``: the frozen settings; ``values``: one value's checks; ``layers``:
reading a section across sources in precedence order; ``validation``: the
model built section by section, problems named by key; ``loading``: the
sources (defaults < YAML file < ``CORAL_*`` environment < flags); ``flags``:
the command-line flags as a source. No pydantic (~19 MiB): the agent stays lean.
"""

from cri_agent.config.flags import flags_to_settings
from cri_agent.config.loading import load_settings
from cri_agent.config.model import OpsSettings, Settings

__all__ = ["OpsSettings", "Settings", "flags_to_settings", "load_settings"]
