"""A local stand-in for Prodsmart that enforces every documented rule and injects faults on demand."""

from agent.sandbox.book import Ledger
from agent.sandbox.options import DEFAULT_TYPES, Fault, SandboxOptions
from agent.sandbox.server import Sandbox

__all__ = ["DEFAULT_TYPES", "Fault", "Ledger", "Sandbox", "SandboxOptions"]
