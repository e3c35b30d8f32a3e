"""Training tasks, one module each; ``base.py`` holds what the loop asks of a task
(:class:`Task`) and what the tasks share (data loading, batching helpers)."""

from __future__ import annotations

from typing import Any

from .base import Task, TaskSetup
from .caption import CaptionTask
from .retrieval import RetrievalTask
from .vqa import VQATask

__all__ = ["TASKS", "Task", "TaskSetup"]

# task name (`mmfast train TASK`, config.json's "task") -> its class; a new task is one line
TASKS: dict[str, type[Task[Any, Any]]] = {t.name: t for t in (CaptionTask, RetrievalTask, VQATask)}
