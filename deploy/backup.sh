#!/usr/bin/env bash
# Back up a cad-node: its journal and its storage folder (NOT FOR CLINICAL USE).
#
#   deploy/backup.sh /etc/cad-node/node.yaml /var/backups/cad-node
#
# Makes DEST/cad-node-<UTC time>/ (0700) holding
#   journal.sqlite   the SQLite journal, by SQLite's online backup (the node may run), or
#   journal.dump     the PostgreSQL journal, by pg_dump -Fc (pg_dump on PATH),
#   storage.tar.gz   the storage folder: spooled images, results, site models, the rest
#                    (the journal and the serve lock left out),
#   SHA256SUMS       the sha256 of both.
# The journal is copied first: every file it names was written before, so the archive
# holds it (files that arrive meanwhile are in the archive and not yet in the journal).
# The configuration (node.yaml, rules) is not copied: keep it with the site's other
# configuration. Restore and upgrade steps: deploy/README.md.
#
# CAD_NODE_PYTHON: a Python with cad-node installed (default: python3; the systemd
# install's is /opt/cad-node/bin/python). It reads the config the way the node does.
# The script prints no secret (the database URL's password is never shown).
set -euo pipefail
umask 077

if [ "$#" -ne 2 ]; then
    echo "usage: $0 NODE_YAML DEST_FOLDER" >&2
    exit 2
fi
config=$1
dest=$2
python=${CAD_NODE_PYTHON:-python3}

# The storage folder, the journal's kind and its location, as the node resolves them.
settings=$("$python" - "$config" <<'PY'
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from cad_node.config import load_settings
from cad_node.errors import ConfigError

try:
    settings = load_settings(Path(sys.argv[1]))
except ConfigError as exc:
    sys.exit(f"backup.sh: {exc}")
url = make_url(settings.resolved_database_url)
if url.get_backend_name() == "sqlite":
    print("sqlite", settings.storage_dir.resolve(), url.database, "", sep="\n")
else:
    # pg_dump takes a libpq URL (no SQLAlchemy driver suffix such as +psycopg) and the
    # password in PGPASSWORD, not on its command line where ps shows it.
    plain = url.set(drivername=url.get_backend_name(), password=None)
    print("postgresql", settings.storage_dir.resolve(), plain.render_as_string(False), sep="\n")
    print(url.password or "")
PY
)
{
    IFS= read -r journal_kind
    IFS= read -r storage_dir
    IFS= read -r journal_location
    IFS= read -r journal_password || true  # empty: $(...) drops trailing newlines
} <<<"$settings"

if [ ! -d "$storage_dir" ]; then
    echo "backup.sh: no storage folder at $storage_dir" >&2
    exit 1
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$dest/cad-node-$stamp"
mkdir -p "$dest"
mkdir -m 0700 "$out"

if [ "$journal_kind" = sqlite ]; then
    "$python" - "$journal_location" "$out/journal.sqlite" <<'PY'
import sqlite3
import sys

# SQLite's online backup: a consistent copy while the node writes (WAL included).
source = sqlite3.connect(sys.argv[1], timeout=30)
target = sqlite3.connect(sys.argv[2])
with target:
    source.backup(target)
check = target.execute("PRAGMA integrity_check").fetchone()[0]
target.close()
source.close()
if check != "ok":
    sys.exit(f"backup.sh: the journal's copy fails its integrity check: {check}")
PY
    journal_file=journal.sqlite
else
    PGPASSWORD=$journal_password pg_dump --format=custom --no-owner --file="$out/journal.dump" --dbname="$journal_location"
    journal_file=journal.dump
fi

# The storage folder. GNU tar exits 1 when a file changed while it was read (an image
# arriving): the archive is still usable, the file is in the next backup.
status=0
tar --create --gzip --file="$out/storage.tar.gz" --directory="$storage_dir" \
    --exclude=./journal.sqlite --exclude=./journal.sqlite-wal \
    --exclude=./journal.sqlite-shm --exclude=./journal.sqlite-journal \
    --exclude=./cad-node-serve.lock --warning=no-file-changed . || status=$?
if [ "$status" -gt 1 ]; then
    echo "backup.sh: tar failed (exit $status)" >&2
    exit "$status"
fi

(cd "$out" && sha256sum "$journal_file" storage.tar.gz >SHA256SUMS)
echo "backup.sh: $journal_kind journal and $storage_dir saved in $out"
