from __future__ import annotations

from django.urls import path

from functions_app import (
    api,
    bucket_notifications_api,
    invocations_api,
    sam_api,
    schedules_api,
    stream_sources_api,
    triggers_api,
)

# Every path ends with a slash; console.exceptions.ApiMiddleware serves the same path without it too.
# Function names, alias names and test event names never contain "/", so plain str converters are exact.
api_urlpatterns = [
    path("functions/", api.FunctionListApi.as_view(), name="api-functions"),
    path("functions/<str:name>/", api.FunctionDetailApi.as_view(), name="api-function"),
    path("functions/<str:name>/code/", api.FunctionCodeApi.as_view(), name="api-function-code"),
    path("functions/<str:name>/versions/", api.VersionListApi.as_view(), name="api-versions"),
    path("functions/<str:name>/versions/<int:number>/", api.VersionDetailApi.as_view(), name="api-version"),
    path("functions/<str:name>/aliases/", api.AliasListApi.as_view(), name="api-aliases"),
    path("functions/<str:name>/aliases/<str:alias>/", api.AliasDetailApi.as_view(), name="api-alias"),
    path("functions/<str:name>/test-events/", api.TestEventListApi.as_view(), name="api-test-events"),
    path("functions/<str:name>/test-events/<str:event>/", api.TestEventDetailApi.as_view(), name="api-test-event"),
    path("functions/<str:name>/url/", triggers_api.FunctionUrlApi.as_view(), name="api-function-url"),
    path("functions/<str:name>/invoke/", invocations_api.InvokeApi.as_view(), name="api-function-invoke"),
    path("functions/<str:name>/schedules/", schedules_api.ScheduleListApi.as_view(), name="api-schedules"),
    path(
        "functions/<str:name>/schedules/<str:schedule>/",
        schedules_api.ScheduleDetailApi.as_view(),
        name="api-schedule",
    ),
    path(
        "functions/<str:name>/bucket-notifications/",
        bucket_notifications_api.BucketNotificationListApi.as_view(),
        name="api-bucket-notifications",
    ),
    path(
        "functions/<str:name>/bucket-notifications/<str:notification>/",
        bucket_notifications_api.BucketNotificationDetailApi.as_view(),
        name="api-bucket-notification",
    ),
    path(
        "bucket-events/<int:notification_id>/",
        bucket_notifications_api.BucketEventsWebhookApi.as_view(),
        name="api-bucket-events",
    ),
    path("event-source-mappings/", stream_sources_api.MappingListApi.as_view(), name="api-event-source-mappings"),
    path(
        "event-source-mappings/<str:uuid>/",
        stream_sources_api.MappingDetailApi.as_view(),
        name="api-event-source-mapping",
    ),
    path("streams/<str:stream>/records/", stream_sources_api.StreamRecordsApi.as_view(), name="api-stream-records"),
    path("schedule-preview/", schedules_api.SchedulePreviewApi.as_view(), name="api-schedule-preview"),
    path("functions/<str:name>/triggers/", schedules_api.FunctionTriggersApi.as_view(), name="api-function-triggers"),
    path("sam-imports/", sam_api.SamImportApi.as_view(), name="api-sam-imports"),
    path("http-apis/", triggers_api.HttpApiListApi.as_view(), name="api-http-apis"),
    path("http-apis/<str:name>/", triggers_api.HttpApiDetailApi.as_view(), name="api-http-api"),
    path("invocations/", invocations_api.InvocationListApi.as_view(), name="api-invocations"),
    path("invocations/<str:invocation_id>/", invocations_api.InvocationDetailApi.as_view(), name="api-invocation"),
    path("dead-letters/", invocations_api.DeadLetterListApi.as_view(), name="api-dead-letters"),
    path("dead-letters/<int:letter_id>/", invocations_api.DeadLetterDetailApi.as_view(), name="api-dead-letter"),
    path(
        "dead-letters/<int:letter_id>/replay/",
        invocations_api.DeadLetterReplayApi.as_view(),
        name="api-dead-letter-replay",
    ),
]
