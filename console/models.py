"""API keys: what ``Authorization: Token …`` carries. Stored as a hash, never as the key."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class Revocable:
    """A credential that may expire and be revoked."""

    revoked_at: datetime | None
    expires_at: datetime | None

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())


class ApiKey(Revocable, models.Model):
    """One of a user's API keys. The key itself is shown once, when it is made; the database keeps its SHA-256 (a
    key is 256 random bits, so a fast hash is enough: there is nothing to guess) and a short prefix by which the
    owner tells their keys apart."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=64)
    prefix = models.CharField(max_length=16)
    key_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="api_key_owner_recent")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AccessKey(Revocable, models.Model):
    """One of a user's AWS-style access keys, for Lambda's API (docs/lambda-api.md). Unlike an API key, the secret is
    stored (encrypted with the platform's Fernet keys, functions_app/secrets.py): verifying a SigV4 signature needs
    the secret itself. It is shown once, when the key is made."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_keys")
    name = models.CharField(max_length=64)
    access_key_id = models.CharField(max_length=20, unique=True)
    secret_ciphertext = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="access_key_owner_recent")]

    def __str__(self) -> str:
        return f"{self.name} ({self.access_key_id})"
