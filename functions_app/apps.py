from django.apps import AppConfig


class FunctionsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "functions_app"
