"""SQLite sandboxes: a private temporary directory, no Docker needed."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from crmops.sandbox import guard


class SqliteSandbox:
    kind = "sqlite"
    engine = "sqlite"
    image = ""
    image_id = ""

    def __init__(self, database: str | None = None) -> None:
        self.name = "crmops-sandbox-" + uuid.uuid4().hex[:10]
        self.database = Path(database or "crm.db").name or "crm.db"
        self.dir: Path | None = None
        self.started_s: float | None = 0.0
        self._kept = False

    @property
    def url(self) -> str:
        if self.dir is None:
            raise RuntimeError("the sandbox is not started")
        return f"sqlite:///{self.dir / self.database}"

    def connect_info(self) -> dict[str, Any]:
        path = self.dir / self.database if self.dir else None
        return {"name": self.name, "image": "", "url": self.url, "shell": f"sqlite3 {path}",
                "remove": f"rm -r {self.dir}"}

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        guard.register(self.name, self.remove)

    def alive(self) -> bool:
        return self.dir is not None and self.dir.is_dir()

    def keep(self) -> None:
        guard.forget(self.name)
        self._kept = True

    def remove(self) -> None:
        if self._kept:
            return
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        guard.forget(self.name)

    def __enter__(self) -> SqliteSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
