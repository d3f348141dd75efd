"""Labels carry their item's project and the model's label they were given against, so the
reviewers page and per-project counts read labels without joining items and predictions. Existing
labels are filled in here; 0014 then makes the project required."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def fill(apps, schema_editor):
    Label, Item, Prediction = (apps.get_model("hitl", name) for name in ("Label", "Item", "Prediction"))
    Label.objects.update(project_id=Subquery(Item.objects.filter(pk=OuterRef("item_id")).values("project_id")[:1]))
    Label.objects.filter(prediction__isnull=False).update(model_value=Subquery(
        Prediction.objects.filter(pk=OuterRef("prediction_id")).values("predicted_label")[:1]))


class Migration(migrations.Migration):

    dependencies = [
        ('hitl', '0012_monitoring_alerts'),
    ]

    operations = [
        migrations.AddField(
            model_name='label',
            name='project',
            field=models.ForeignKey(db_index=False, help_text="The item's project, kept on the label so per-project counts read labels alone.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='hitl.project'),
        ),
        migrations.AddField(
            model_name='label',
            name='model_value',
            field=models.CharField(blank=True, default='', help_text="The model's label in that pre-annotation (blank: none was shown), copied when the label is written so agreement with the model needs no join to predictions.", max_length=200),
            preserve_default=False,
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
