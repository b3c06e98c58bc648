"""Executors run tasks: ``local`` (embedded subprocesses) is the default."""

from .base import EnvironmentInfo, Executor, TaskHandle, TaskSpec
from .local import LocalExecutor

__all__ = ["EnvironmentInfo", "Executor", "LocalExecutor", "TaskHandle", "TaskSpec"]
