from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from console import api as console_api
from console import views
from functions_app.page_urls import page_urlpatterns as function_pages
from functions_app.urls import api_urlpatterns
from metrics_app.urls import api_urlpatterns as metrics_api
from metrics_app.urls import page_urlpatterns as metrics_pages

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_urlpatterns)),
    path("api/v1/", include(metrics_api)),
    path("api/v1/api-keys/", console_api.ApiKeyListApi.as_view(), name="api-keys"),
    path("api/v1/api-keys/<int:key_id>/", console_api.ApiKeyDetailApi.as_view(), name="api-key"),
    path("", include(function_pages)),
    path("", include(metrics_pages)),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
