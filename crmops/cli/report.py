"""`crmops status` (verdicts, exit 61 on red) and `crmops report --html` (the status page)."""

from __future__ import annotations

from pathlib import Path

import click

from crmops.cli.context import AppContext, pass_app, table

_COLOUR = {"green": "green", "amber": "yellow", "red": "red"}


def _overview(app: AppContext):  # type: ignore[no-untyped-def]
    from crmops.status.verdicts import gather

    return gather(app.config)


def _print_verdicts(console, ov) -> None:  # type: ignore[no-untyped-def]
    from rich.markup import escape

    # long summaries wrap under themselves, and a long chunk id folds whole instead of ending in "…"
    t = table("", "", "", show_header=False, box=None, padding=(0, 1, 0, 0))
    for v in ov.verdicts:
        c = _COLOUR[v.level]
        t.add_row(f"[{c}]{v.level.upper():5}[/{c}]", f"{v.name:12}", escape(v.summary))
    console.print(t, highlight=False)
    console.print(f"overall: [{_COLOUR[ov.level]}]{ov.level.upper()}[/{_COLOUR[ov.level]}]")


def _raise_if_red(ov) -> None:  # type: ignore[no-untyped-def]
    from crmops.errors import StatusRed

    red = [v for v in ov.verdicts if v.level == "red"]
    if red:
        more = f" (+{len(red) - 1} more)" if len(red) > 1 else ""
        raise StatusRed(f"status red: {red[0].name}: {red[0].summary}{more}")


@click.command("status")
@pass_app
def status_cmd(app: AppContext) -> None:
    """Are backups fresh and proven? One verdict per check; exit 61 when one is red (for monitoring)."""
    ov = _overview(app)
    app.emit(ov.to_dict(), lambda console: _print_verdicts(console, ov))
    _raise_if_red(ov)


@click.command("report")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True, path_type=Path), metavar="FILE",
              required=True, help="Write the status page (one self-contained HTML file) to FILE.")
@pass_app
def report_cmd(app: AppContext, html_path: Path) -> None:
    """Write the status page for managers and auditors: snapshots, verifications, upgrades, warnings.

    Exits 0 whatever the verdicts (the page shows them); use `crmops status` to alert.
    """
    from crmops.status.page import render_html

    ov = _overview(app)
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = html_path.with_name(f".{html_path.name}.tmp")
        tmp.write_text(render_html(ov), encoding="utf-8")
        tmp.replace(html_path)
    except OSError as e:
        from crmops.errors import ConfigError

        raise ConfigError(f"{html_path}: cannot write the report ({e.strerror})") from None

    def human(console) -> None:  # type: ignore[no-untyped-def]
        # one line, as for any file written; `crmops status` prints the verdicts themselves
        levels = [v.level for v in ov.verdicts]
        counts = ", ".join(f"{levels.count(level)} {level}" for level in ("red", "amber") if level in levels)
        console.print(f"status page written to {html_path}: overall [{_COLOUR[ov.level]}]{ov.level.upper()}"
                      f"[/{_COLOUR[ov.level]}]" + (f" ({counts})" if counts else ""), highlight=False)

    app.emit({"html": str(html_path), **ov.to_dict()}, human)
