"""What of the app's layer stays out of the image.

The upper layer holds what ``apt-get install`` brought, including what only a full
Debian system reads: documentation, apt and dpkg state, service-manager files (there
is no systemd or sysvinit in the guest: our init starts the app), logs, caches, and
the build-time apt settings, resolv.conf and policy-rc.d. passwd/group are generated
for the image (root + the users the package created), and ld.so.cache is dropped
because it would name libraries the image does not hold (ld.so then searches its
system directories, which is where the ELF closure put them).

Each rule is a glob over the path relative to the image root:

* ``TREE`` rules drop the path and everything below it;
* ``CONTENTS`` rules keep the directory itself (an app may expect it) and drop below.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

TREE = (
    # documentation
    "usr/share/doc",
    "usr/share/doc-base",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    # package manager state and the build-time settings
    "var/lib/apt",
    "var/lib/dpkg",
    "var/lib/ucf",
    "etc/apt",
    "usr/sbin/policy-rc.d",
    "etc/resolv.conf",
    "etc/ld.so.cache",
    "etc/.pwd.lock",
    # generated for the image instead
    "etc/passwd",
    "etc/passwd-",
    "etc/group",
    "etc/group-",
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/subuid",
    "etc/subuid-",
    "etc/subgid",
    "etc/subgid-",
    # service managers: the guest has none
    "etc/init.d",
    "etc/rc?.d",
    "etc/rcS.d",
    "etc/systemd",
    "usr/lib/systemd",
    "lib/systemd",
    "var/lib/systemd",
    "usr/lib/tmpfiles.d",
    "usr/lib/sysusers.d",
    "etc/logrotate.d",
    "etc/cron.*",
)
CONTENTS = (
    "var/cache",
    "var/log",
)


def pruned(rel: str) -> bool:
    """True if ``rel`` (a path relative to the image root, no leading slash) stays out."""
    rel = rel.strip("/")
    if not rel:
        return False
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if any(fnmatchcase(prefix, rule) for rule in TREE):
            return True
        if i < len(parts) and any(fnmatchcase(prefix, rule) for rule in CONTENTS):
            return True
    return False
