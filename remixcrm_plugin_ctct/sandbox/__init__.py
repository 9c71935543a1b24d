"""An offline stand-in for Constant Contact (API and authorization server) on a loopback port."""

from .authz import SANDBOX_CLIENT_ID
from .contacts import SEEDED_LIST_ID
from .server import SEEDED_TOKEN, Sandbox

__all__ = ["SANDBOX_CLIENT_ID", "SEEDED_LIST_ID", "SEEDED_TOKEN", "Sandbox"]
