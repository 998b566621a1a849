"""Keys of DRF's authtoken (plaintext, 40 hex characters, one per user) become API keys stored by hash, and the
plaintext table goes. A migrated key keeps working: authentication hashes whatever key it is given."""

import hashlib

from django.db import migrations

TABLE = "authtoken_token"


def tokens_to_api_keys(apps, schema_editor):
    connection = schema_editor.connection
    if TABLE not in connection.introspection.table_names():
        return
    ApiKey = apps.get_model("console", "ApiKey")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id, created FROM {TABLE}")  # noqa: S608 - a constant table name
        rows = cursor.fetchall()
    for key, user_id, created in rows:
        api_key = ApiKey.objects.create(
            owner_id=user_id, name="API token", prefix=key[:8], key_sha256=hashlib.sha256(key.encode()).hexdigest()
        )
        ApiKey.objects.filter(pk=api_key.pk).update(created_at=created)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {TABLE}")


class Migration(migrations.Migration):
    dependencies = [("console", "0001_api_keys")]

    operations = [migrations.RunPython(tokens_to_api_keys, migrations.RunPython.noop)]
