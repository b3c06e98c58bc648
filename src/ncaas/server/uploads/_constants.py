"""Sizes and switches of the upload path."""

from __future__ import annotations

import os

_DIGITS = {"SHA-256": 64, "CRC-32C": 8}  # hexadecimal digits of each checksum
_BLOCK = 4 << 20  # hand received bytes to the writer and hasher in 4 MiB blocks: bounded memory
_AHEAD = 4  # blocks waiting for the disk per request (16 MiB): bounded memory, no stall at each block
_WRITEBACK = 32 << 20  # start writing to the disk every 32 MiB instead of all at the final fsync
_ALIGN = 4096  # O_DIRECT writes whole disk blocks (512 or 4096 bytes) at block offsets
USAGE_CACHE_S = 5.0  # a group's files are summed at most this often for its quota (a walk of its storage)
_DIRECT_IO = hasattr(os, "O_DIRECT") and os.environ.get("NCAAS_UPLOAD_DIRECT_IO", "1") != "0"
