"""What `run` opens at start besides the config, opened the same way by `check`.

The config reader checks values; some problems only show when the files named are opened: a
TLS certificate or a CA bundle that does not load, the folder of a SQLite database that does
not exist. `preflight` opens them with the code the daemon serves and delivers with, so that
`check` refuses exactly what `run` would, both with a `ConfigError` (one line naming the key,
exit 2) before the database is touched. It also warns about secret files other users can read.
"""

from __future__ import annotations

import logging
import stat

from monitor.alerts.sender import WebhookSender
from monitor.config.settings import DatabaseSettings, Settings
from monitor.exposition.http import server_tls_context
from monitor.store.engine import sqlite_file

log = logging.getLogger(__name__)


def preflight(settings: Settings) -> None:
    """Open what `run` opens at start; raise `ConfigError` for the first that fails.

    The SQLite folder, the HTTPS certificate, key and client CA, each webhook's `ca_file`;
    then one WARNING per secret file that every user may read.
    """
    check_database_folder(settings.database)
    server_tls_context(settings.http, settings.source)
    for webhook in settings.webhooks:
        # Building a sender loads its CA bundle, as the dispatcher's does.
        WebhookSender(webhook).close()
    warn_about_readable_secrets(settings)


def check_database_folder(database: DatabaseSettings) -> None:
    """Raise `ConfigError` naming the URL's key when a SQLite file's folder does not exist.

    SQLite creates the file, not its folder; without this the engine would fail later, as a
    runtime error rather than the config problem it is.
    """
    path = sqlite_file(database.url)
    if path is None:
        return
    folder = path.absolute().parent
    if not folder.is_dir():
        raise database.error(
            f"the folder of the SQLite database, {folder}, does not exist; create it or fix "
            "the path"
        )


def warn_about_readable_secrets(settings: Settings) -> None:
    """Log one WARNING for each secret file that every user of the machine may read.

    Only the file's mode is looked at, never its content.
    """
    for key, path in settings.secret_files:
        try:
            mode = path.stat().st_mode
        except OSError:
            # Read a moment ago; whatever happened since is not this check's business.
            continue
        if mode & stat.S_IROTH:
            log.warning(
                "%s: %s: %s is readable by every user of this machine and holds a secret; "
                "chmod 600 %s",
                settings.source,
                key,
                path,
                path,
            )
