"""commune-sync agent: the encrypted queue on a commune PC and its sync loop."""

from .agent import Agent, enroll
from .config import AgentConfig, AgentPaths
from .queue import Queue
from .sync import SyncEngine

__all__ = ["Agent", "AgentConfig", "AgentPaths", "Queue", "SyncEngine", "enroll"]
