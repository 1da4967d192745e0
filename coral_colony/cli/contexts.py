"""The CLI's config file and ``coral config``: named contexts for reaching colonies, as kubeconfig has.

The file is ``$CORAL_CONFIG``, else ``$XDG_CONFIG_HOME/coral/config.yaml``
(``~/.config/coral/config.yaml``)::

    current-context: prod
    contexts:
      - name: prod
        colony: 127.0.0.1:9000                # host:port
        ca: /home/me/.config/coral/prod-ca.crt
        token-file: /home/me/.config/coral/prod.token
        tls-server-name: coral-colony.coral.svc

A context holds the path of a token file, never a token. Relative paths are
read from the file's directory. The flags (``--colony``, ``--ca``,
``--token-file``, ``--tls-server-name``) and the environment
(``CORAL_COLONY``, ``CORAL_COLONY_CA``, ``CORAL_TOKEN``, ``CORAL_TOKEN_FILE``)
win over the context, field by field.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_base.errors import ConfigError
from coral_base.listing import Column, JsonObject, Listing, output_flags
from coral_base.private_files import write_private

if TYPE_CHECKING:  # the client loads gRPC: `coral config` does not need it
    from coral_colony.client import EndpointDefaults

# field -> key in the file (kubeconfig spells its keys with dashes)
_KEYS = {"colony": "colony", "ca": "ca", "token_file": "token-file", "tls_server_name": "tls-server-name"}


@dataclass(frozen=True, slots=True)
class Context:
    name: str
    colony: str = ""
    ca: str = ""
    token_file: str = ""
    tls_server_name: str = ""

    def document(self) -> JsonObject:
        return {"name": self.name, **{key: getattr(self, field) or None for field, key in _KEYS.items()}}


@dataclass(frozen=True, slots=True)
class CliConfig:
    current: str = ""
    contexts: tuple[Context, ...] = ()

    def find(self, name: str) -> Context | None:
        return next((c for c in self.contexts if c.name == name), None)


def config_path() -> Path:
    if os.environ.get("CORAL_CONFIG"):
        return Path(os.environ["CORAL_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "coral" / "config.yaml"


def load(path: Path) -> CliConfig:
    """The file's contexts (none when it does not exist); a malformed file is a ConfigError naming the key."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return CliConfig()
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"the CLI config {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", []), list):
        raise ConfigError(f"the CLI config {path}: expected a mapping with a list under 'contexts'")
    unknown = set(data) - {"current-context", "contexts"}
    if unknown:
        raise ConfigError(f"the CLI config {path}: unknown key(s) {', '.join(sorted(unknown))}")
    contexts = tuple(_context(entry, path=path, index=i) for i, entry in enumerate(data.get("contexts") or []))
    return CliConfig(current=str(data.get("current-context") or ""), contexts=contexts)


def _context(entry: Any, *, path: Path, index: int) -> Context:
    where = f"the CLI config {path}: contexts[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ConfigError(f"{where}: each context is a mapping with a name")
    unknown = set(entry) - {"name", *_KEYS.values()}
    if unknown:
        raise ConfigError(f"{where} ({entry['name']}): unknown key(s) {', '.join(sorted(unknown))}")
    values = {field: str(entry.get(key) or "") for field, key in _KEYS.items()}
    return Context(name=entry["name"], **values)


def save(path: Path, config: CliConfig) -> None:
    import yaml

    data = {
        "current-context": config.current,
        "contexts": [
            {"name": c.name, **{key: getattr(c, field) for field, key in _KEYS.items() if getattr(c, field)}}
            for c in config.contexts
        ],
    }
    write_private(path, yaml.safe_dump(data, sort_keys=False).encode())


def _file_path(value: str, *, base: Path) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def endpoint_defaults(name: str | None) -> EndpointDefaults:
    """The context ``name`` (``--context``), else the current one, as the layer below the environment."""
    from coral_colony.client import EndpointDefaults

    path = config_path()
    config = load(path)
    chosen = name or config.current
    if not chosen:
        return EndpointDefaults()
    context = config.find(chosen)
    if context is None:
        known = ", ".join(c.name for c in config.contexts) or "none"
        raise ConfigError(f"no context {chosen!r} in {path} (contexts: {known}): see `coral config get-contexts`")
    return EndpointDefaults(
        address=context.colony,
        ca_file=_file_path(context.ca, base=path.parent),
        token_file=_file_path(context.token_file, base=path.parent),
        tls_server_name=context.tls_server_name,
    )


# -- coral config ----------------------------------------------------------------------------------


def register(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="contexts of the CLI config file: which colony, CA and token file to use",
        description=f"The CLI config file: $CORAL_CONFIG, else {config_path()}. Flags and CORAL_* variables "
        "win over the current context, setting by setting.",
    )
    sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    get = sub.add_parser("get-contexts", help="list the contexts; * marks the current one")
    output_flags(get)
    get.set_defaults(handler=get_contexts)
    current = sub.add_parser("current-context", help="print the current context's name")
    current.set_defaults(handler=current_context)
    use = sub.add_parser("use-context", help="make NAME the current context")
    use.add_argument("name")
    use.set_defaults(handler=use_context)
    set_ = sub.add_parser("set-context", help="create NAME, or change the settings given")
    set_.add_argument("name")
    set_.add_argument("--colony", help="host:port of the colony")
    set_.add_argument("--ca", type=Path, help="the colony's ca.crt")
    set_.add_argument("--token-file", type=Path, help="a 0600 file holding the operator token")
    set_.add_argument("--tls-server-name", help="the name to check the certificate against (port-forward)")
    set_.add_argument("--use", action="store_true", help="also make it the current context")
    set_.set_defaults(handler=set_context)
    delete = sub.add_parser("delete-context", help="remove NAME")
    delete.add_argument("name")
    delete.set_defaults(handler=delete_context)


def get_contexts(args: argparse.Namespace) -> int:
    config = load(config_path())
    columns: tuple[Column[Context], ...] = (
        Column("CURRENT", lambda c: "*" if c.name == config.current else ""),
        Column("NAME", lambda c: c.name),
        Column("COLONY", lambda c: c.colony or "-"),
        Column("CA", lambda c: c.ca or "-"),
        Column("TOKEN FILE", lambda c: c.token_file or "-"),
        Column("TLS SERVER NAME", lambda c: c.tls_server_name or "-"),
    )
    Listing(columns, Context.document, output=args.output, no_headers=args.no_headers).print(config.contexts)
    return 0


def current_context(args: argparse.Namespace) -> int:
    config = load(config_path())
    if not config.current:
        raise ConfigError(f"no current context in {config_path()}: `coral config use-context NAME`")
    print(config.current)
    return 0


def use_context(args: argparse.Namespace) -> int:
    path = config_path()
    config = load(path)
    if config.find(args.name) is None:
        raise ConfigError(f"no context {args.name!r} in {path}: create it with `coral config set-context`")
    save(path, replace(config, current=args.name))
    print(f'Switched to context "{args.name}".')
    return 0


def set_context(args: argparse.Namespace) -> int:
    path = config_path()
    config = load(path)
    before = config.find(args.name) or Context(name=args.name)
    given = {
        "colony": args.colony,
        "ca": str(args.ca.expanduser().resolve()) if args.ca else None,
        "token_file": str(args.token_file.expanduser().resolve()) if args.token_file else None,
        "tls_server_name": args.tls_server_name,
    }
    after = replace(before, **{k: v for k, v in given.items() if v is not None})
    contexts = tuple(after if c.name == args.name else c for c in config.contexts)
    if before not in config.contexts:
        contexts += (after,)
    save(path, CliConfig(current=args.name if args.use or not config.current else config.current, contexts=contexts))
    print(f'Context "{args.name}" {"modified" if before in config.contexts else "created"}.')
    return 0


def delete_context(args: argparse.Namespace) -> int:
    path = config_path()
    config = load(path)
    if config.find(args.name) is None:
        raise ConfigError(f"no context {args.name!r} in {path}")
    contexts = tuple(c for c in config.contexts if c.name != args.name)
    save(path, CliConfig(current="" if config.current == args.name else config.current, contexts=contexts))
    print(f'Deleted context "{args.name}".')
    return 0
