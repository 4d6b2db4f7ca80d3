"""Fill a Django CRM database through the application's own ORM, so its schema and rows are
what the CRM itself writes: companies, their contacts, deals with attached files (written to
MEDIA_ROOT by Django's storage), and tasks.

    docker exec CONTAINER python3 /opt/crmops/fixture.py [COMPANIES]

The first run on an empty database also runs the CRM's own `setupdata` (migrate, reference
data, the two first users). Values are made up and repeatable (a fixed random seed).
"""

import os
import random
import sys
from datetime import date, timedelta

sys.path.insert(0, "/app")
os.chdir("/app")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webcrm.crmops_settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.core.files.base import ContentFile  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from common.models import TheFile  # noqa: E402
from crm.models import Company, Contact, Deal  # noqa: E402
from crm.models import Stage as DealStage  # noqa: E402
from tasks.models import Task, TaskStage  # noqa: E402

COMPANIES = int(sys.argv[1]) if len(sys.argv) > 1 else 300
rng = random.Random(25)

if "auth_user" not in connection.introspection.table_names() or not User.objects.exists():
    call_command("setupdata", verbosity=0)
owner = User.objects.filter(is_superuser=True).order_by("id").first()
deal_stages = list(DealStage.objects.all()) or [None]
task_stage = TaskStage.objects.order_by("index_number").first()
deal_type = ContentType.objects.get_for_model(Deal)
today = date(2026, 11, 2)

with transaction.atomic():
    base = Company.objects.count()
    for i in range(base, base + COMPANIES):
        company = Company.objects.create(full_name=f"Company {i:05d} GmbH", email=f"info@company{i}.example",
                                         city_name=rng.choice(["Berlin", "Lyon", "Porto", "Gdansk"]),
                                         owner=owner)
        for j in range(2):
            Contact.objects.create(company=company, first_name=f"Person{i}x{j}", last_name=f"Family{i}",
                                   email=f"p{i}.{j}@company{i}.example", owner=owner)
        deal = Deal.objects.create(name=f"Deal {i:05d}", ticket=f"T{i:05d}", company=company, contact=company.contacts.first(),
                                   next_step="call back", next_step_date=today + timedelta(days=i % 30),
                                   amount=rng.randint(100, 90000), stage=rng.choice(deal_stages), owner=owner)
        if i % 3 == 0:
            f = TheFile(content_type=deal_type, object_id=deal.id, attached_to_deal=True)
            f.file.save(f"quote-{i:05d}.txt", ContentFile(f"Quote for deal {i}\n".encode() * (50 + i % 200)))
        if i % 2 == 0:
            task = Task.objects.create(name=f"Follow up deal {i:05d}", next_step="prepare offer",
                                       next_step_date=today + timedelta(days=i % 14), stage=task_stage,
                                       owner=owner)
            task.responsible.add(owner)

print(f"companies {Company.objects.count()} contacts {Contact.objects.count()} deals {Deal.objects.count()} "
      f"tasks {Task.objects.count()} files {TheFile.objects.count()}")
