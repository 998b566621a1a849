from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from console import access_keys_api, views
from console import api as console_api
from functions_app.lambda_api.code_links import code_download
from functions_app.lambda_api.views import lambda_api
from functions_app.page_urls import page_urlpatterns as function_pages
from functions_app.urls import api_urlpatterns
from metrics_app.urls import api_urlpatterns as metrics_api
from metrics_app.urls import page_urlpatterns as metrics_pages

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    # Lambda's own API, at its dated paths (/2015-03-31/functions, /2017-10-31/..., ...): docs/lambda-api.md.
    re_path(r"^\d{4}-\d{2}-\d{2}/", lambda_api, name="lambda-api"),
    path("code-downloads/<str:token>/", code_download, name="lambda-code-download"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_urlpatterns)),
    path("api/v1/", include(metrics_api)),
    path("api/v1/api-keys/", console_api.ApiKeyListApi.as_view(), name="api-keys"),
    path("api/v1/api-keys/<int:key_id>/", console_api.ApiKeyDetailApi.as_view(), name="api-key"),
    path("api/v1/access-keys/", access_keys_api.AccessKeyListApi.as_view(), name="access-keys"),
    path("api/v1/access-keys/<str:access_key_id>/", access_keys_api.AccessKeyDetailApi.as_view(), name="access-key"),
    path(
        "api/v1/access-keys/<str:access_key_id>/rotate/",
        access_keys_api.AccessKeyRotateApi.as_view(),
        name="access-key-rotate",
    ),
    path("api/v1/account/", access_keys_api.AccountApi.as_view(), name="account-api"),
    path("", include(function_pages)),
    path("", include(metrics_pages)),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
