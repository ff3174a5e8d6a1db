"""The errors a technician may see, as one small tree.

    PlainError          one plain sentence for the technician; the CLI prints it and exits 1
     +- MissingSecret   (agent.config.secrets) a secret the configuration needs is not set
     +- StorageError    (agent.outbox.types) the database cannot be used
     +- CommandError    (agent.cli.common) a command cannot do what was asked

`agent.config.problems.ConfigError` stands apart: it carries every problem of a file, each
with its line. Anything else that escapes is a bug: exit 70, traceback only with --debug.
"""

from __future__ import annotations


class PlainError(Exception):
    """An error the technician can act on: the message is one plain sentence, detail after it."""
