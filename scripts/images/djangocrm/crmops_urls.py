"""The upstream URLs plus /healthz (answers 200 once the database answers), and the
header sign-on crmops_settings enables with CRM_USER_HEADER."""

import json
import os

from django.contrib.auth.backends import RemoteUserBackend
from django.contrib.auth.middleware import RemoteUserMiddleware
from django.db import connection
from django.http import HttpResponse
from django.urls import path

from webcrm.urls import urlpatterns as _upstream


def healthz(request):
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        body, status = {"status": "ok", "version": os.environ.get("APP_VERSION", "")}, 200
    except Exception as e:  # the database is down or refuses us
        body, status = {"status": "fail", "error": type(e).__name__}, 503
    return HttpResponse(json.dumps(body), status=status, content_type="application/json")


class HeaderUser(RemoteUserMiddleware):
    header = "HTTP_" + os.environ.get("CRM_USER_HEADER", "X-CRM-User").upper().replace("-", "_")
    force_logout_if_no_header = False


class KnownUser(RemoteUserBackend):
    create_unknown_user = False


urlpatterns = [path("healthz", healthz), *_upstream]
