"""Tasks (the unit of extension), the bundle format and predictors."""

from torchkiln.tasks import forecasting, image_classification, text_classification  # noqa: F401  (registers them)
from torchkiln.tasks.base import TASKS, ParamGroup, PrimaryMetric, Task, get_task

__all__ = ["TASKS", "ParamGroup", "PrimaryMetric", "Task", "get_task"]
