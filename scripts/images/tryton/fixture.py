"""Rows for a Tryton database, written through Tryton's own ORM inside the crmops-tryton image.

    trytond-admin -d DB --all --activate-dependencies -u sale_opportunity   # once, on an empty database
    python3 /opt/crmops/fixture.py DB PARTIES

A company with its currency; PARTIES parties, each with an address and two contact mechanisms;
an opportunity for every other party and a draft sale for every third; an attachment
(ir.attachment, kept in the filestore, crmops's attachments folder) on every fifth
opportunity. The admin user is made a member of every group and of the company, so a client
signed in as admin reads the sales and opportunities. As Tryton's root user (0): a fresh
database has no access rights set up for anyone else. Idempotent: a second run adds nothing.
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
        User, Group = pool.get("res.user"), pool.get("res.group")
        if Company.search([]):
            print("already filled")
            return
        eur, = Currency.create([{"name": "Euro", "code": "EUR", "symbol": "€", "rounding": Decimal("0.01"),
                                 "digits": 2}])
        owner, = Party.create([{"name": "Acme Trading"}])
        company, = Company.create([{"party": owner.id, "currency": eur.id}])
        admin, = User.search([("login", "=", "admin")])
        User.write([admin], {"groups": [("add", [g.id for g in Group.search([])])],
                             "companies": [("add", [company.id])], "company": company.id})
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
        pool = Pool()
        Opportunity, Sale, Attachment = pool.get("sale.opportunity"), pool.get("sale.sale"), pool.get("ir.attachment")
        opps = Opportunity.create([{
            "party": party, "company": company, "description": f"deal {i:04d}", "currency": eur,
            "start_date": dt.date(2026, 1 + i % 12, 1), "amount": Decimal(100 + i), "address": address,
        } for i, (party, address) in enumerate(made) if i % 2 == 0])
        sales = Sale.create([{
            "party": party, "company": company, "currency": eur, "invoice_address": address,
            "shipment_address": address, "description": f"order {i:04d}", "sale_date": dt.date(2026, 1 + i % 12, 15),
            "lines": [("create", [{"type": "line", "description": f"service {i}", "quantity": 2.0,
                                   "unit_price": Decimal(50 + i)}])],
        } for i, (party, address) in enumerate(made) if i % 3 == 0])
        files = Attachment.create([{
            "name": f"quote-{o.id}.txt", "resource": str(o), "type": "data",
            "data": f"quote for {o.description}\n".encode() * 20,
        } for n, o in enumerate(opps) if n % 5 == 0])
        tx.commit()
    print(f"parties {len(made)} opportunities {len(opps)} sales {len(sales)} attachments {len(files)}")


if __name__ == "__main__":
    main()
