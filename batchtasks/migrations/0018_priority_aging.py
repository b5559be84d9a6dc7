"""Priority aging (``BATCHTASKS["PRIORITY_AGING"]``): the priority a task was given is
kept in ``base_priority`` when the sweeper raises ``priority`` by its wait; NULL until then,
so existing rows need no update."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("batchtasks", "0017_owners_without_constraint"),
    ]

    operations = [
        migrations.AddField(
            model_name="batchtask",
            name="base_priority",
            field=models.SmallIntegerField(
                blank=True, editable=False, null=True, verbose_name="priority before aging"
            ),
        ),
    ]
