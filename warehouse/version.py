"""The data version of a storage root: a short hash that changes whenever a committed file
is added, replaced or removed (the app's cache key, app/common.py and app/disk_cache.py)."""

from __future__ import annotations

import hashlib

import pyarrow.fs as pafs

from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS


def data_version(root: str) -> str:
    """Changes whenever a committed file is added, replaced or removed: the cache key.

    Local roots: the modification times of the partition directories (a rename into place,
    a new file or a deletion updates its directory), a few stat calls whatever the number
    of files. Object stores have no directory times: every file's path, size and time."""
    layout = Layout.open(root)
    h = hashlib.sha256(root.encode())
    for table in SCHEMAS:
        base = layout.table_root(table)
        if layout.is_local:
            sel = pafs.FileSelector(base, recursive=False, allow_not_found=True)
            infos = [i for i in layout.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
            infos.append(layout.fs.get_file_info(base))
        else:
            infos = layout.fs.get_file_info(layout.list_files(table))
        for info in sorted(infos, key=lambda i: i.path):
            h.update(f"{info.path}:{info.type}:{info.size}:{info.mtime_ns}".encode())
    return h.hexdigest()[:16]
