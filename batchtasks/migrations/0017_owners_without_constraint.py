"""The owner columns lose their foreign key constraint: the users may live in another
database than the tasks (docs/how-to/task-database.md).

0001 and 0012 now create the columns without it, so that ``migrate --database tasks``
works on a database without the user table; databases made before lose the
constraint here (found by introspection, by whatever name it has).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

OWNED = ("batchtask", "batchtaskschedule")


def drop_owner_constraints(apps, schema_editor):
    connection = schema_editor.connection
    for model_name in OWNED:
        model = apps.get_model("batchtasks", model_name)
        with connection.cursor() as cursor:
            constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
        names = [
            name
            for name, c in constraints.items()
            if c["foreign_key"] and c["columns"] == ["owner_id"]
        ]
        if names and connection.vendor == "sqlite":
            schema_editor._remake_table(model)  # SQLite drops a constraint by a new table
            continue
        for name in names:
            schema_editor.execute(schema_editor._delete_fk_sql(model, name))


class Migration(migrations.Migration):
    dependencies = [
        ("batchtasks", "0016_api_tokens"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="batchtask",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="batch_tasks",
                to=settings.AUTH_USER_MODEL,
                verbose_name="owner",
            ),
        ),
        migrations.AlterField(
            model_name="batchtaskschedule",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="batch_task_schedules",
                to=settings.AUTH_USER_MODEL,
                verbose_name="owner",
            ),
        ),
        migrations.RunPython(drop_owner_constraints, migrations.RunPython.noop),
    ]
