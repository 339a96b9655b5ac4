"""Schemathesis hooks for crates/ballast/tests/schemathesis.rs.

`POST /v1/pools` takes host paths (a pool's directory, disk files, block
devices), and `POST /v1/backup-targets` a directory that backups write to. A fuzzer left alone there would make directories and filesystems
anywhere on the host, or format a device it happens to name. Every absolute
path in such a body is moved under BALLAST_FUZZ_ROOT, the test's own scratch
directory, right before the request is sent (all phases go through this
hook). Paths the document forbids (relative, with `.` or `..` components)
are left as they are: the daemon refuses them before it touches anything.
Each request this hook sees is logged to BALLAST_FUZZ_LOG, so the test can
tell the hook ran.
"""

import json
import os

import schemathesis

ROOT = os.environ["BALLAST_FUZZ_ROOT"].rstrip("/")
LOG = os.environ["BALLAST_FUZZ_LOG"]
PATH_FIELDS = ("path", "disk_file")
PATH_LISTS = ("disks", "spare_disks")


def _confine(value):
    if isinstance(value, str) and value.startswith("/"):
        return ROOT + value
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() != "POST" or case.path not in ("/v1/pools", "/v1/backup-targets"):
        return
    body = case.body
    if isinstance(body, dict):
        for field in PATH_FIELDS:
            if field in body:
                body[field] = _confine(body[field])
        for field in PATH_LISTS:
            if isinstance(body.get(field), list):
                body[field] = [_confine(v) for v in body[field]]
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(body, default=str) + "\n")
