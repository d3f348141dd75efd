# Separate from 0013: PostgreSQL refuses to alter a table with the fill's deferred foreign-key
# checks still pending in the same transaction.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('hitl', '0013_label_project_model_value'),
    ]

    operations = [
        migrations.AlterField(
            model_name='label',
            name='project',
            field=models.ForeignKey(db_index=False, help_text="The item's project, kept on the label so per-project counts read labels alone.", on_delete=django.db.models.deletion.CASCADE, related_name='+', to='hitl.project'),
        ),
        migrations.AddIndex(
            model_name='label',
            index=models.Index(fields=['project', 'reviewer_name'], name='label_project_reviewer'),
        ),
    ]
