from django.apps import AppConfig


class FunctionsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "functions_app"

    def ready(self) -> None:
        from functions_app import checks  # noqa: F401 - registers the deployment check
