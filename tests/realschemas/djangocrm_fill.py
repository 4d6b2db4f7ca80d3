"""Rows for a Django CRM database through its own ORM: run with Django CRM's venv python.

    CRMOPS_REAL_DB_URL=... DJANGO_SETTINGS_MODULE=crmops_real_settings python djangocrm_fill.py fill N
    ... python djangocrm_fill.py delete NAME [NAME ...]

`fill` makes N companies with two contacts and a deal each (their emails and tags too);
`delete` deletes companies the way the CRM's admin does (Django's cascade, in Python).
"""

import datetime as dt
import sys

import django


def fill(n: int) -> None:
    from crm.models import Company, Contact, Deal, Tag
    from django.contrib.auth.models import User
    owner = User.objects.filter(is_superuser=True).first()
    tags = [Tag.objects.create(name=f"tag {i}") for i in range(5)]
    for i in range(n):
        c = Company.objects.create(full_name=f"Company {i}", email=f"info{i}@example.org", owner=owner)
        c.tags.add(tags[i % 5])
        people = [Contact.objects.create(company=c, first_name=f"Ann {i}.{k}", last_name="Smith",
                                         email=f"ann{i}.{k}@example.org", owner=owner) for k in range(2)]
        d = Deal.objects.create(name=f"deal {i}", next_step="call", next_step_date=dt.date(2026, 12, 1 + i % 28),
                                company=c, contact=people[0], owner=owner, ticket=f"T{i:05d}")
        d.tags.add(tags[(i + 1) % 5])
    print(Company.objects.count(), Contact.objects.count(), Deal.objects.count())


def delete(names: list[str]) -> None:
    from crm.models import Company
    print(Company.objects.filter(full_name__in=names).delete())


if __name__ == "__main__":
    django.setup()
    if sys.argv[1] == "fill":
        fill(int(sys.argv[2]))
    else:
        delete(sys.argv[2:])
