"""crmops: keep a self-hosted CRM's data safe, from nightly backup to staged upgrade."""

__version__ = "0.1.0"
