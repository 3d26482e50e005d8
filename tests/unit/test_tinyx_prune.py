"""tinyx/image/prune.py and the app layer's way into the image tree (assemble.add_layer):
documentation, package state, service-manager files and build-time settings stay out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyx.image import prune
from tinyx.image.assemble import Item, Tree, add_layer, drop_empty_dirs

DROPPED = [
    "usr/share/doc",
    "usr/share/doc/redis-server/copyright",
    "usr/share/man/man1/redis-server.1.gz",
    "usr/share/info/x.info",
    "usr/share/locale/de/LC_MESSAGES/x.mo",
    "usr/share/lintian/overrides/redis-server",
    "var/lib/dpkg/status",
    "var/lib/apt/extended_states",
    "etc/apt/sources.list.d/debian.sources",
    "usr/sbin/policy-rc.d",
    "etc/resolv.conf",
    "etc/ld.so.cache",
    "etc/passwd",
    "etc/shadow-",
    "etc/gshadow",
    "etc/init.d/redis-server",
    "etc/rc2.d/S01redis-server",
    "etc/systemd/system/redis.service",
    "usr/lib/systemd/system/redis-server.service",
    "etc/logrotate.d/redis-server",
    "etc/cron.daily/x",
    "var/cache/debconf/config.dat",
    "var/log/apt/history.log",
    "var/log/redis",
]
KEPT = [
    "usr/bin/redis-server",
    "etc/redis/redis.conf",
    "etc/default/redis-server",
    "usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "usr/share/nginx/html/index.html",
    "var/lib/redis",
    "var/cache",  # the directory stays, its contents go
    "var/log",
    "etc/passwdqc.conf",  # a rule names a path, not a prefix of a name
    "usr/share/documentation",
]


@pytest.mark.parametrize("rel", DROPPED)
def test_pruned(rel: str) -> None:
    assert prune.pruned(rel)
    assert prune.pruned("/" + rel)  # a leading slash does not matter


@pytest.mark.parametrize("rel", KEPT)
def test_kept(rel: str) -> None:
    assert not prune.pruned(rel)


def _layer(upper: Path) -> None:
    files = {
        "usr/bin/app": "ELF?",
        "usr/share/doc/app/copyright": "c",
        "etc/app/app.conf": "x=1",
        "var/lib/dpkg/status": "Package: app",
        "var/log/app.log": "log",
        "usr/share/perl/5.36/Foo.pm": "perl",
        "usr/share/perl/5.36/sub/Bar.pm": "perl",
        "usr/bin/perl": "perl",
    }
    for rel, text in files.items():
        (upper / rel).parent.mkdir(parents=True, exist_ok=True)
        (upper / rel).write_text(text)
    (upper / "var/lib/app").mkdir(parents=True)
    (upper / "usr/bin/app-link").symlink_to("app")


def test_the_layer_keeps_the_app_and_drops_pruned_and_excluded_paths(tmp_path: Path) -> None:
    _layer(tmp_path)
    tree = Tree()
    excluded = {"usr/bin/perl", "usr/share/perl", "usr/share/perl/5.36", "usr/share/perl/5.36/Foo.pm"}
    excluded |= {"usr/share/perl/5.36/sub", "usr/share/perl/5.36/sub/Bar.pm"}
    skipped = add_layer(tree, tmp_path, excluded)
    drop_empty_dirs(tree, excluded)
    items = tree.items
    assert items["usr/bin/app"].kind == "file" and items["usr/bin/app"].nbytes == 4
    assert items["usr/bin/app-link"].kind == "link" and items["usr/bin/app-link"].target == "app"
    assert items["etc/app/app.conf"].source == tmp_path / "etc/app/app.conf"
    assert items["var/lib/app"].kind == "dir" and items["var/log"].kind == "dir"
    for gone in ("usr/share/doc", "var/lib/dpkg", "var/log/app.log", "usr/bin/perl", "usr/share/perl"):
        assert not any(rel == gone or rel.startswith(gone + "/") for rel in items), gone
    assert skipped == 6  # doc, var/lib/dpkg, var/log/app.log, perl, Foo.pm, Bar.pm


def test_the_tree_resolves_its_own_directory_links() -> None:
    tree = Tree()
    tree.add("bin", Item("link", 0o777, "layout", target="usr/bin"))
    tree.add("lib64", Item("link", 0o777, "layout", target="/usr/lib64"))
    assert tree.canonical("/bin/sh") == "usr/bin/sh"
    assert tree.canonical("lib64/ld.so") == "usr/lib64/ld.so"
    assert tree.canonical("bin") == "bin"  # the link itself
    assert tree.canonical("etc/hosts") == "etc/hosts"
