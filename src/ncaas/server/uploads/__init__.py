"""Resumable, streamed, checksummed uploads into a group's ``inputs/``.

The protocol (all calls authenticated, all uploads private to the group):

``POST /api/uploads`` ``{"path", "size", "crc32c"?, "sha256"?, "overwrite"?}``
    announce a file; answers its ``id`` and ``offset`` 0.
``PUT /api/uploads/{id}?offset=N`` (raw body, optional ``X-Chunk-CRC32C`` or ``X-Chunk-SHA256``)
    append bytes at ``N``, which must equal the bytes received so far (else
    409 with the right offset). The body is streamed to disk as it arrives;
    a dropped connection keeps what arrived (unless a chunk checksum was
    given, then the unverified chunk is dropped), so the client asks
    ``GET /api/uploads/{id}`` for the offset and goes on from there.
``POST /api/uploads/{id}/complete`` ``{"crc32c"?, "sha256"?}``
    once all bytes are in: the server's checksums of the whole file are checked
    against the ones given (on create or here), the file is flushed to disk and
    moved into ``inputs/<path>`` atomically. The answer carries the file's
    ``crc32c`` (and its ``sha256`` when one was asked for).

The end-to-end check is a CRC-32C of the whole file (8 hexadecimal digits, as
``crc32c`` computes it; the checksum S3 and Google Cloud Storage use for the
same job), computed with the CPU's CRC instructions, many times faster than
SHA-256, by the uploader and the server, which may share a machine's cpus. A
SHA-256 is computed too, while streaming,
when the upload declares one on creation; given only on completion, it costs a
second read of the file. Datasets get their SHA-256 anyway when a job uses them
(the certificate) and from ``GET /api/inputs/{name}``.

Both running checksums are kept per upload in memory (after a server restart
they are recomputed from the partial file), so completing a 1 GB upload costs no
second read. Whole disk blocks are written with ``O_DIRECT`` where the file
system allows it (``NCAAS_UPLOAD_DIRECT_IO=0`` turns that off): no copy into the
page cache, and the final fsync has almost nothing left to write. The figures
behind these choices are in ``benchmarks/README.md``.
"""

from __future__ import annotations

from ..space import StorageFull
from ._buffers import keep_freed_memory_for_streaming
from ._model import UploadInfo, check_digest
from ._service import Uploads

__all__ = ["StorageFull", "UploadInfo", "Uploads", "check_digest", "keep_freed_memory_for_streaming"]
