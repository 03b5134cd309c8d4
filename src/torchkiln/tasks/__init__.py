"""Tasks, the unit of extension: the protocol every family provides (``base``) and the families.

Families are found through the ``torchkiln.tasks`` entry point group, so importing this package
imports none of them; :data:`~torchkiln.tasks.base.TASKS` loads them on first use.
"""

from torchkiln.tasks.base import TASKS, ParamGroup, PrimaryMetric, Task, get_task

__all__ = ["TASKS", "ParamGroup", "PrimaryMetric", "Task", "get_task"]
