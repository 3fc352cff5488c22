"""Which ADPIPE_HOME a staging directory belongs to: its id, written into the directory by the first home that
stages there (`adpipe-home.json`), and checked by every command that stages or loads what is staged there.

Staged sync runs and staged referral events alike are read back as the home's own: a sync loads the runs staged
after its last committed one, replay and prune act on every run, and an events load drops the events already staged
and recomputes its hours from them. Two homes sharing one staging directory (the default, `./staging`, is relative
to where adpipe runs) would load each other's runs into their warehouses and count each other's events.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from pipeline.atomic import write_json_atomic
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.storage import Store, open_store

log = logging.getLogger(__name__)

OWNER = "adpipe-home.json"
"""In the staging directory: the id of the ADPIPE_HOME that stages there."""
HOME_ID = "home_id.json"
"""In ADPIPE_HOME: the home's id, which moves with it."""


def check_staging(settings: Settings) -> None:
    """Refuse, in one line, a staging directory bound to another ADPIPE_HOME (`bind_staging`).

    A home made again where the bound one was (deleted, then synced or replayed) takes the directory
    over: it is the same configuration, and replaying the runs into a new home is what they are kept for.
    """
    store = open_store(settings.staging_dir)
    marker = store.root / OWNER
    if not store.is_file(marker):
        return
    try:
        owner = json.loads(store.read_bytes(marker))
        owner_id, owner_home = owner["home_id"], owner["home"]
    except (ValueError, TypeError, KeyError):
        raise ConfigError(f"{store.url(marker)} is not a file adpipe wrote: delete it, and sync again") from None
    home_id, here = _home_id(settings.home, make=False), str(settings.home.absolute())
    if owner_id == home_id:
        if owner_home != here:  # the home moved: the directory follows it
            _write_owner(store, settings)
        return
    if owner_home == here and home_id is None:
        log.info("%s is a new home where the one %s was bound to was: it takes the runs over", here, marker)
        _write_owner(store, settings)
        return
    raise ConfigError(
        f"ADPIPE_STAGING_DIR {settings.staging_dir} holds the staged runs of another ADPIPE_HOME"
        f" ({owner_home}): give each home a staging directory of its own; if that home is this one,"
        f" moved without its {HOME_ID}, delete {store.url(marker)} to take its runs over"
    )


def bind_staging(store: Store, settings: Settings) -> None:
    """Write this home's id into its staging directory (`store`), unless it is there: before the home stages
    anything there. A directory that held runs before this file existed is taken as it is."""
    if not store.is_file(store.root / OWNER):
        _write_owner(store, settings)


def _write_owner(store: Store, settings: Settings) -> None:
    home = settings.home.absolute()
    store.write_json(store.root / OWNER, {"home_id": _home_id(home, make=True), "home": str(home)})


def _home_id(home: Path, *, make: bool) -> str | None:
    """The home's id (made on first use when `make`); None for a home without one yet."""
    path = home / HOME_ID
    if not path.is_file():
        if not make:
            return None
        write_json_atomic(path, {"home_id": uuid.uuid4().hex})
    return json.loads(path.read_text())["home_id"]
