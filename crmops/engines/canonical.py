"""The canonical fingerprint: every value hashed in one text form, the same on every supported server
version and whatever the server's settings, so a copy on a newer version compares with the old server.

What differs for equal values (docs/TESTING.md, "What differs between server versions") is the
session's settings, not the release: PostgreSQL's TimeZone, DateStyle, IntervalStyle,
extra_float_digits, bytea_output and lc_monetary, MariaDB's time_zone. They are fixed here; numeric
loses trailing zeros (1.50 = 1.5), money is written as its number, xml as its output function writes
it (what pg_dump stores: without the `<?xml version="1.0"?>` declaration), MariaDB's FLOAT as the
double it holds (its text form keeps 6 digits, so 16777216 and 16777200 would look alike).
Each value is quoted (PostgreSQL) or prefixed with its length (MariaDB) before a row is hashed,
so no value can pass for a separator.
"""

from __future__ import annotations

from typing import Any

CANONICAL = "canonical"

#: PostgreSQL session settings the canonical text forms are written under
PG_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres", "extra_float_digits": "1",
               "bytea_output": "hex"}

_PG_NUMERIC, _PG_MONEY, _PG_XML = 1700, 790, 142

#: MariaDB/MySQL data types hashed as their bytes in hex
BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit", "geometry"}


def pg_settle(conn: Any) -> None:
    """Fix the settings that change PostgreSQL's text forms, for this session."""
    for name, value in PG_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def pg_columns(conn: Any, qualified: str) -> list[tuple[str, str]]:
    """Each column's name and the SQL of its canonical text (a domain as its base type)."""
    rows = conn.execute("""SELECT a.attname, quote_ident(a.attname),
                                  CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END::int
                           FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
                           WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
                           ORDER BY a.attnum""", (qualified,)).fetchall()
    return [(name, _pg_value(quoted, base)) for name, quoted, base in rows]


def _pg_value(col: str, base: int) -> str:
    if base == _PG_NUMERIC:
        return f"trim_scale({col})::text"
    if base == _PG_MONEY:
        return f"{col}::numeric::text"
    if base == _PG_XML:
        return f"xml_out({col})::text"
    return f"{col}::text"


def pg_hash(values: list[str]) -> str:
    """The 64-bit hash of a row of canonical texts (record syntax quotes each one, NULL stays apart)."""
    return f"hashtextextended(ROW({', '.join(values)})::text, 0)"


def my_settle(cur: Any) -> None:
    """Fix the setting that changes MariaDB's text forms (TIMESTAMP), for this session."""
    cur.execute("SET SESSION time_zone = '+00:00'")


def my_columns(cur: Any, table: str) -> list[tuple[str, str]]:
    """Each column's name and the SQL of its canonical text, prefixed with its length (NULL as N)."""
    cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = %s ORDER BY ordinal_position", (table,))
    out = []
    for col, dtype in cur.fetchall():
        q = "`" + str(col).replace("`", "``") + "`"
        dtype = str(dtype).lower()
        value = f"HEX({q})" if dtype in BINARY_TYPES else f"{q} + 0e0" if dtype == "float" else q
        text = f"CAST({value} AS CHAR CHARACTER SET utf8mb4)"
        # its length first (in bytes), so no value passes for a separator; cheaper than QUOTE()
        out.append((str(col), f"COALESCE(CONCAT(LENGTH({text}), ':', {text}), 'N')"))
    return out


def my_sum(values: list[str]) -> str:
    """The order-independent sum of a row's 64-bit hash (the first 16 hex digits of its MD5)."""
    row = f"MD5(CONCAT_WS(',', {', '.join(values)}))"
    return f"COALESCE(SUM(CAST(CONV(SUBSTRING({row}, 1, 16), 16, 10) AS DECIMAL(65, 0))), 0)"


def table_sums(engine: Any, table: str) -> tuple[int, int, dict[str, int]]:
    """Canonically, in one scan: a table's rows, their checksum, and each column's checksum.

    A column's checksum sums its values' hashes, so it says which columns changed; the row
    checksum says whether values moved between rows, which the columns' sums cannot see."""
    if engine.name == "postgresql":
        schema, _, name = table.rpartition(".")
        qualified = f"{_pg_ident(schema or 'public')}.{_pg_ident(name)}"
        with engine.connect() as conn:
            pg_settle(conn)
            cols = pg_columns(conn, qualified)
            sums = [f"COALESCE(sum({pg_hash([v])}), 0)" for _, v in cols]
            row = conn.execute(f"SELECT count(*), COALESCE(sum({pg_hash([v for _, v in cols])}), 0)"
                               f"{''.join(', ' + s for s in sums)} FROM {qualified}").fetchone()
    else:
        conn = engine.connect()
        try:
            with conn.cursor() as cur:
                my_settle(cur)
                cols = my_columns(cur, table)
                sums = [my_sum([v]) for _, v in cols]
                cur.execute(f"SELECT COUNT(*), {my_sum([v for _, v in cols])}{''.join(', ' + s for s in sums)} "
                            f"FROM `{table}`")
                row = cur.fetchone()
        finally:
            conn.close()
    return int(row[0]), int(row[1]), {name: int(v) for (name, _), v in zip(cols, row[2:], strict=True)}


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def hex128(value: int) -> str:
    """A checksum as stored in a fingerprint: its low 128 bits in hex."""
    return format(int(value) & (2**128 - 1), "032x")
