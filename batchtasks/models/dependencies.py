"""The links between a task and the parents it waits for (``depends_on``)."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from .tasks import BatchTask


class BatchTaskDependency(models.Model):
    """Task ``child`` runs once task ``parent`` is final (``position``: its place in the
    child's ``depends_on``). ``settled`` once the parent's final outcome was counted for
    the child: a parent retried and finished again is never counted twice."""

    # No database constraints: links are inserted in bulk with their child (10,000 for
    # a group's ``then``) and deleted with their tasks (``transitions.delete_tasks``).
    parent = models.ForeignKey(
        BatchTask,
        on_delete=models.CASCADE,
        related_name="child_links",
        db_index=False,
        db_constraint=False,
    )
    child = models.ForeignKey(
        BatchTask,
        on_delete=models.CASCADE,
        related_name="parent_links",
        db_index=False,
        db_constraint=False,
    )
    position = models.PositiveIntegerField(_("position"), default=0)
    settled = models.BooleanField(_("settled"), default=False)

    class Meta:
        verbose_name = _("batch task dependency")
        verbose_name_plural = _("batch task dependencies")
        constraints = [
            # Also the index of a parent's links (its final write counts them down).
            models.UniqueConstraint(fields=["parent", "child"], name="batchtaskdep_unique"),
        ]
        indexes = [
            # A child's parents, in ``depends_on`` order.
            models.Index(fields=["child", "position"], name="batchtaskdep_child_idx"),
        ]

    def __str__(self) -> str:
        return f"task #{self.child_id} after #{self.parent_id}"
