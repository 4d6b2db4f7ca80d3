"""Deterministic demo CRM rows: the data kinds that break naive backup tools.

Chinese and English text, emoji, NULLs, binary with NUL bytes and invalid UTF-8,
JSON, DECIMAL money, time-zone-aware timestamps, foreign keys, and a few duplicate
contacts (same e-mail, as real CRMs have). Rows are produced lazily in id order from
one random.Random(seed), so the same seed gives the same database and memory stays
flat whatever the size.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

SURNAMES_ZH = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN_ZH = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕"
FIRST_EN = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Chloé",
    "José",
]
LAST_EN = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernández",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "O'Brien",
    "Müller",
]
COMPANY_ZH = ["华信", "东方", "长城", "天成", "鸿运", "金桥", "海纳", "恒通", "瑞丰", "博远", "中科", "新锐"]
COMPANY_SUFFIX_ZH = ["科技有限公司", "贸易有限公司", "集团", "软件股份有限公司", "物流有限公司"]
COMPANY_EN = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay", "Soylent", "Tyrell"]
COMPANY_SUFFIX_EN = ["Inc.", "Ltd", "GmbH", "LLC", "Holdings", "& Co."]
INDUSTRIES = ["制造业", "Retail", "金融", "Healthcare", "教育", "Logistics", "Software", "能源", None]
WORDS_EN = [
    "meeting",
    "follow-up",
    "proposal",
    "pricing",
    "discount",
    "contract",
    "renewal",
    "budget",
    "quarter",
    "demo",
    "integration",
    "support",
    "onboarding",
    "migration",
    "invoice",
    "delivery",
    "schedule",
    "feedback",
    "decision",
    "stakeholder",
]
WORDS_ZH = [
    "客户",
    "合同",
    "报价",
    "会议",
    "跟进",
    "需求",
    "预算",
    "交付",
    "续约",
    "折扣",
    "项目",
    "方案",
    "付款",
    "演示",
    "集成",
    "培训",
    "反馈",
    "决策",
    "季度",
    "发票",
]
EMOJI = ["🚀", "💼", "📞", "✅", "🤝", "📈", "🔥", "💰", "📝", "😀", "🇨🇳", "👍🏽"]
SOURCES = ["web", "referral", "trade show", "cold call", "微信", "partner"]
CURRENCIES = ["CNY", "USD", "EUR"]
ROLES = [
    ("admin", {"all": True}),
    ("sales", {"accounts": "rw", "reports": "r"}),
    ("support", {"accounts": "r", "activities": "rw"}),
    ("manager", {"reports": "rw", "备注": "可以"}),
]

#: rows per size; activities carry most of the bulk
SIZES: dict[str, dict[str, int]] = {
    #: a smoke: every table, relation and kind of row, in well under a second (`make bench` in CI)
    "tiny": {
        "users": 4,
        "accounts": 12,
        "contacts": 60,
        "leads": 20,
        "opportunities": 40,
        "activities": 200,
        "attachments": 6,
        "body": 120,
    },
    "small": {
        "users": 12,
        "accounts": 120,
        "contacts": 600,
        "leads": 200,
        "opportunities": 400,
        "activities": 2500,
        "attachments": 60,
        "body": 300,
    },
    "medium": {
        "users": 60,
        "accounts": 3000,
        "contacts": 15000,
        "leads": 5000,
        "opportunities": 12000,
        "activities": 90000,
        "attachments": 600,
        "body": 600,
    },
    "large": {
        "users": 300,
        "accounts": 60000,
        "contacts": 300000,
        "leads": 100000,
        "opportunities": 250000,
        "activities": 2600000,
        "attachments": 3000,
        "body": 700,
    },
}

#: duplicate contacts written on purpose: same account, differing case and spaces
DUPLICATES = 4


@dataclass(frozen=True)
class Plan:
    size: str
    seed: int

    @property
    def n(self) -> dict[str, int]:
        return SIZES[self.size]


def _rng(plan: Plan, table: str) -> random.Random:
    """One stream per table, so adding rows to one table never shifts another's."""
    digest = hashlib.sha256(f"{plan.seed}:{table}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _ts(r: random.Random, days: int = 700) -> datetime:
    return EPOCH + timedelta(seconds=r.randrange(days * 86400), microseconds=r.randrange(1_000_000))


def _person(r: random.Random) -> tuple[str, str]:
    if r.random() < 0.5:
        return r.choice(GIVEN_ZH) + (r.choice(GIVEN_ZH) if r.random() < 0.6 else ""), r.choice(SURNAMES_ZH)
    return r.choice(FIRST_EN), r.choice(LAST_EN)


def _company(r: random.Random) -> str:
    if r.random() < 0.5:
        return r.choice(COMPANY_ZH) + r.choice(COMPANY_SUFFIX_ZH)
    return f"{r.choice(COMPANY_EN)} {r.choice(COMPANY_SUFFIX_EN)}"


def _text(r: random.Random, length: int) -> str:
    parts: list[str] = []
    total = 0
    while total < length:
        chinese = r.random() < 0.5
        w = "".join(r.choice(WORDS_ZH) for _ in range(r.randint(1, 3))) if chinese else r.choice(WORDS_EN)
        if r.random() < 0.05:
            w += r.choice(EMOJI)
        parts.append(w)
        total += len(w) + 1
    return " ".join(parts)


def roles(plan: Plan) -> Iterator[dict[str, Any]]:
    for i, (name, perms) in enumerate(ROLES, 1):
        yield {"id": i, "name": name, "permissions": perms}


def users(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "users")
    for i in range(1, plan.n["users"] + 1):
        first, last = _person(r)
        yield {
            "id": i,
            "role_id": 1 if i == 1 else r.randint(2, len(ROLES)),
            "login": f"user{i:04d}",
            "full_name": f"{last}{first}" if ord(first[0]) > 0x3000 else f"{first} {last}",
            "email": f"user{i}@crm.example.com",
            "created_at": _ts(r, 30),
        }


def accounts(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "accounts")
    for i in range(1, plan.n["accounts"] + 1):
        yield {
            "id": i,
            "owner_id": r.randint(1, plan.n["users"]),
            "name": f"{_company(r)} #{i}",
            "industry": r.choice(INDUSTRIES),
            "website": f"https://www.example{i}.com" if r.random() < 0.7 else None,
            "annual_revenue": Decimal(r.randrange(0, 10**11)) / 100 if r.random() < 0.8 else None,
            "address": _text(r, 40) if r.random() < 0.6 else None,
            "created_at": _ts(r),
        }


def contacts(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "contacts")
    n = plan.n["contacts"]
    for i in range(1, n + 1):
        first, last = _person(r)
        row = {
            "id": i,
            "account_id": _account_of(plan, i),
            "first_name": first,
            "last_name": last,
            "email": f"contact{i}@customer{i % 97}.example.org",
            "phone": f"+86 1{r.randint(30, 99)} {r.randint(1000, 9999)} {r.randint(1000, 9999)}"
            if r.random() < 0.8
            else None,
            "title": r.choice(["CEO", "CTO", "采购经理", "Buyer", "销售总监", None]),
            "notes": _text(r, 80) if r.random() < 0.3 else None,
            "created_at": _ts(r),
        }
        # the last DUPLICATES contacts re-enter earlier people of the same account
        if i > n - DUPLICATES:
            original = i - (n - DUPLICATES)
            row["email"] = (
                f"  Contact{original}@Customer{original % 97}.example.org ".upper()
                if i % 2
                else f"contact{original}@customer{original % 97}.example.org"
            )
            row["account_id"] = _account_of(plan, original)
        yield row


def _account_of(plan: Plan, contact_id: int) -> int:
    """A contact's account, computable without replaying the random stream."""
    return (contact_id * 7919 + plan.seed) % plan.n["accounts"] + 1


def leads(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "leads")
    for i in range(1, plan.n["leads"] + 1):
        first, last = _person(r)
        yield {
            "id": i,
            "owner_id": r.randint(1, plan.n["users"]) if r.random() < 0.85 else None,
            "company": _company(r),
            "contact_name": f"{first} {last}",
            "email": f"lead{i}@prospect.example.net" if r.random() < 0.9 else None,
            "source": r.choice(SOURCES),
            "score": r.randint(0, 100) if r.random() < 0.7 else None,
            "created_at": _ts(r),
        }


def opportunities(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "opportunities")
    for i in range(1, plan.n["opportunities"] + 1):
        created = _ts(r)
        yield {
            "id": i,
            "account_id": r.randint(1, plan.n["accounts"]),
            "contact_id": r.randint(1, plan.n["contacts"] - DUPLICATES) if r.random() < 0.9 else None,
            "stage_id": 1,
            "title": _text(r, 30)[:255],
            "amount": Decimal(r.randrange(100_00, 5_000_000_00)) / 100,
            "currency": r.choice(CURRENCIES),
            "expected_close": (created + timedelta(days=r.randint(10, 200))).date() if r.random() < 0.8 else None,
            "details": {
                "products": [r.choice(WORDS_EN) for _ in range(r.randint(0, 3))],
                "discount": r.choice([0, 5, 12.5]),
                "备注": _text(r, 12),
                "nested": {"approved": r.random() < 0.5, "by": None},
            }
            if r.random() < 0.85
            else None,
            "created_at": created,
            "updated_at": created + timedelta(hours=r.randint(0, 500)),
        }


def stage_changes(plan: Plan) -> Iterator[tuple[int, int]]:
    """(opportunity id, new stage): moves along the pipeline, recorded by the audit trigger."""
    r = _rng(plan, "stages")
    for i in range(1, plan.n["opportunities"] + 1):
        stage = r.choice([1, 2, 2, 3, 3, 4, 5])
        if stage != 1:
            yield i, stage


def activities(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "activities")
    body = plan.n["body"]
    for i in range(1, plan.n["activities"] + 1):
        kind = r.choice(["call", "call", "note", "email", "meeting"])
        yield {
            "id": i,
            "kind": kind,
            "contact_id": r.randint(1, plan.n["contacts"]) if r.random() < 0.9 else None,
            "opportunity_id": r.randint(1, plan.n["opportunities"]) if r.random() < 0.6 else None,
            "user_id": r.randint(1, plan.n["users"]),
            "subject": _text(r, 24)[:255],
            "body": _text(r, r.randint(body // 2, body * 3 // 2)) if r.random() < 0.95 else None,
            "duration_seconds": r.randint(30, 3600) if kind == "call" else None,
            "occurred_at": _ts(r),
        }


@dataclass(frozen=True)
class AttachmentFile:
    id: int
    relpath: str
    content: bytes


def attachment_files(plan: Plan) -> Iterator[AttachmentFile]:
    """PDF-like blobs; every fifth repeats an earlier file's bytes under another name."""
    r = _rng(plan, "attachments")
    top = {"tiny": 16 * 1024, "small": 64 * 1024, "medium": 512 * 1024, "large": 4 * 1024 * 1024}[plan.size]
    previous: list[bytes] = []
    for i in range(1, plan.n["attachments"] + 1):
        if previous and i % 5 == 0:
            content = previous[r.randrange(len(previous))]
        else:
            size = r.randint(1024, top)
            content = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + r.randbytes(size) + b"\n%%EOF\n"
            previous.append(content)
            if len(previous) > 20:
                previous.pop(0)
        folder = f"{2024 + i % 2}/{(i % 12) + 1:02d}"
        yield AttachmentFile(i, f"{folder}/quote-{i:05d}.pdf", content)


def attachment_rows(plan: Plan) -> Iterator[dict[str, Any]]:
    r = _rng(plan, "attachment-rows")
    for f in attachment_files(plan):
        thumb = r.randbytes(r.randint(16, 256)) + b"\x00\xff\xfe" if r.random() < 0.7 else None
        yield {
            "id": f.id,
            "opportunity_id": r.randint(1, plan.n["opportunities"]),
            "filename": f"报价单-{f.id}.pdf" if f.id % 2 else f"quote {f.id} ✅.pdf",
            "storage_path": f.relpath,
            "content_type": "application/pdf",
            "size": len(f.content),
            "sha256": hashlib.sha256(f.content).hexdigest(),
            "thumbnail": thumb,
            "uploaded_at": _ts(r),
        }


#: load order respects foreign keys
TABLES: list[tuple[str, Any]] = [
    ("roles", roles),
    ("users", users),
    ("accounts", accounts),
    ("contacts", contacts),
    ("leads", leads),
    ("opportunities", opportunities),
    ("activities", activities),
    ("attachments", attachment_rows),
]
