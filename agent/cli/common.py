"""What the commands share: plain errors, loading the configuration, opening the database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.errors import PlainError

if TYPE_CHECKING:
    from agent.config.problems import ConfigError
    from agent.config.specs import AgentConfig
    from agent.outbox.opening import Access
    from agent.outbox.store import Outbox


class CommandError(PlainError):
    """A command cannot do what was asked: one plain sentence, exit code 1."""


class ConfigFailed(Exception):
    """The configuration file has problems; the CLI lists them all and exits 1."""

    def __init__(self, error: ConfigError) -> None:
        self.error = error


def load(path: str) -> AgentConfig:
    from agent.config.loader import load_config
    from agent.config.problems import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigFailed(exc) from None


async def open_outbox(cfg: AgentConfig, access: Access) -> Outbox:
    """The database, beside a possibly running agent: "reader" only reads; "operator" writes in
    transactions serialised with the agent's and never touches the agent's calls in flight."""
    from agent.outbox.store import Outbox

    return await Outbox.open(cfg.storage.path, synchronous=cfg.storage.synchronous,
                             max_size_mb=cfg.storage.max_size_mb,
                             waste_without_count=cfg.prodsmart.waste_without_count, access=access)
