import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("hitl", "0004_items_in_content_store"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectMembership",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "role",
                    models.CharField(
                        choices=[
                            ("viewer", "Viewer"),
                            ("reviewer", "Reviewer"),
                            ("ml_engineer", "ML engineer"),
                            ("admin", "Project admin"),
                        ],
                        max_length=20,
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "project",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="memberships",
                        to="hitl.project",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="project_memberships",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["project_id", "user_id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("project", "user"), name="one_membership_per_user"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            ("role__in", ["viewer", "reviewer", "ml_engineer", "admin"])
                        ),
                        name="membership_known_role",
                    ),
                ],
            },
        ),
    ]
