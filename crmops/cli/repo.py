"""`crmops repo init` and `crmops repo info`."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app


@click.group("repo")
def repo_group() -> None:
    """Create and inspect the snapshot repository."""


@repo_group.command("init")
@pass_app
def init_cmd(app: AppContext) -> None:
    """Create the repository and its master key (wrapped by the passphrase or key file)."""
    from crmops.repository import Repository, credential, write_key_file
    from crmops.storage import open_store

    cfg = app.config
    created_key = False
    if cfg.encryption.key_file is not None and not cfg.encryption.key_file.exists():
        write_key_file(cfg.encryption.key_file)
        created_key = True
    store = open_store(cfg.repository.url, cfg.repository)
    created_bucket = None
    if hasattr(store, "bucket_exists") and not store.bucket_exists():
        store.create_bucket()  # S3: a missing bucket is made here when the credentials allow it
        created_bucket = store.bucket
    repo = Repository.init(store, credential(cfg), chunk_avg=cfg.repository.chunk_avg_kib * 1024,
                           compression_level=cfg.repository.compression_level)
    result = {"ok": True, "repository": store.url, "id": repo.id, "key_slot": repo.slot_id,
              "key_file_created": str(cfg.encryption.key_file) if created_key else None,
              "bucket_created": created_bucket}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        if created_bucket:
            console.print(f"created bucket {created_bucket} (it did not exist)")
        console.print(f"created repository {repo.id} at {store.url}")
        if created_key:
            console.print(f"generated key file {cfg.encryption.key_file}: keep a copy somewhere safe, "
                          "away from the repository; without it the backups cannot be read")

    app.emit(result, human)


@repo_group.command("info")
@pass_app
def info_cmd(app: AppContext) -> None:
    """Where the repository is, its format, and how much it holds."""
    from crmops.repository import open_repository

    repo = open_repository(app.config)
    objects = list(repo.store.list("data/"))
    result = {"repository": repo.store.url, "id": repo.id, "format": repo.config["format"],
              "chunker": repo.config["chunker"], "snapshots": len(repo.snapshot_ids()), "chunks": len(objects),
              "stored_bytes": sum(size for _, size in objects)}
    def human(console) -> None:  # type: ignore[no-untyped-def]
        chunker = result["chunker"]
        console.print(f"repository  {result['repository']}\n"
                      f"id          {result['id']} (format {result['format']})\n"
                      f"chunking    {chunker.get('algorithm', '?')}, average {_kib(chunker.get('avg'))} "
                      f"({_kib(chunker.get('min'))} to {_kib(chunker.get('max'))})\n"
                      f"holds       {_plural(result['snapshots'], 'snapshot')}, {_plural(result['chunks'], 'chunk')}, "
                      f"{result['stored_bytes'] / 1e6:,.1f} MB stored", markup=False)

    app.emit(result, human)


def _kib(n: int | None) -> str:
    return "?" if n is None else f"{n // 1024:,} KiB"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
