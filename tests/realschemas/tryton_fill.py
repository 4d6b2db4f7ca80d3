"""Rows for a Tryton database, written through Tryton's own ORM: run with Tryton's venv python.

    TRYTOND_DATABASE__URI=postgresql://user:pw@host:port/ python tryton_fill.py DBNAME PARTIES

A company with its currency, PARTIES parties each with an address and two contact
mechanisms, and an opportunity for every other party; as Tryton's root user (0), so the
access rules of a fresh database (no administrator groups yet) do not stand in the way.
"""

import datetime as dt
import sys
from decimal import Decimal

from trytond.pool import Pool
from trytond.transaction import Transaction


def main() -> None:
    database, parties = sys.argv[1], int(sys.argv[2])
    Pool(database).init()
    with Transaction().start(database, 0, context={}) as tx:
        pool = Pool()
        Currency, Party, Company = pool.get("currency.currency"), pool.get("party.party"), pool.get("company.company")
        eur, = Currency.create([{"name": "Euro", "code": "EUR", "symbol": "€", "rounding": Decimal("0.01"),
                                 "digits": 2}])
        owner, = Party.create([{"name": "Acme Trading"}])
        company, = Company.create([{"party": owner.id, "currency": eur.id}])
        made = Party.create([{
            "name": f"Customer {i}",
            "addresses": [("create", [{"street": f"{i} Main Street", "city": "Springfield",
                                       "postal_code": f"{10000 + i}"}])],
            "contact_mechanisms": [("create", [{"type": "email", "value": f"c{i}@example.org"},
                                               {"type": "phone", "value": f"+1 555 {i:04d}"}])],
        } for i in range(parties)])
        made = [(p.id, p.addresses[0].id) for p in made]
        company, eur = company.id, eur.id
        tx.commit()
    with Transaction().start(database, 0, context={"company": company}) as tx:
        Opportunity = Pool().get("sale.opportunity")
        opps = Opportunity.create([{
            "party": party, "company": company, "description": f"deal {i}", "currency": eur,
            "start_date": dt.date(2026, 1 + i % 12, 1), "amount": Decimal(100 + i),
            "address": address,
        } for i, (party, address) in enumerate(made) if i % 2 == 0])
        tx.commit()
    print(len(made), len(opps))


if __name__ == "__main__":
    main()
