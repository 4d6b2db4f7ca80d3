"""Django CRM settings for a container: the upstream settings, with the database, media and
static folders, hosts and secret key taken from the environment (DB_ENGINE, DB_HOST, DB_PORT,
DB_NAME, DB_USER, DB_PASSWORD, MEDIA_ROOT, STATIC_ROOT, SECRET_KEY).

CRM_USER_HEADER names a request header a trusted reverse proxy sets to the signed-in user
(single sign-on); the upgrade playbook's HTTP checks read CRM pages through it.
"""

import os
from pathlib import Path

from webcrm.settings import *  # noqa: F401,F403
from webcrm import settings as _upstream

DATABASES = {"default": {
    "ENGINE": {"postgres": "django.db.backends.postgresql", "mysql": "django.db.backends.mysql"}[
        os.environ.get("DB_ENGINE", "postgres")],
    "HOST": os.environ.get("DB_HOST", "localhost"),
    "PORT": os.environ.get("DB_PORT", ""),
    "NAME": os.environ.get("DB_NAME", "crm"),
    "USER": os.environ.get("DB_USER", "crm"),
    "PASSWORD": os.environ.get("DB_PASSWORD", ""),
}}
if os.environ.get("DB_ENGINE") == "mysql":
    # PyMySQL in place of mysqlclient (which needs a C build); Django asks for mysqlclient >= 2.2.1
    import pymysql

    pymysql.version_info = (2, 2, 1, "final", 0)
    pymysql.install_as_MySQLdb()
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
SECRET_KEY = os.environ.get("SECRET_KEY", _upstream.SECRET_KEY)
DEBUG = False
ALLOWED_HOSTS = ["*"]
# Path objects: the CRM's code joins them with /
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", "/srv/crm/media"))
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", "/srv/crm/static"))
GEOIP_PATH = MEDIA_ROOT / "geodb"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
ROOT_URLCONF = "webcrm.crmops_urls"
if os.environ.get("CRM_USER_HEADER"):
    MIDDLEWARE = [*_upstream.MIDDLEWARE]
    MIDDLEWARE.insert(MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
                      "webcrm.crmops_urls.HeaderUser")
    AUTHENTICATION_BACKENDS = ["webcrm.crmops_urls.KnownUser", "django.contrib.auth.backends.ModelBackend"]
