"""URLs of the browser console's function pages (included at the site root)."""

from __future__ import annotations

page_urlpatterns: list = []
