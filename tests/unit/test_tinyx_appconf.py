"""tinyx/image/appconf.py: /etc/tinyx/app.conf, the interface the init (lvinit) reads."""

from __future__ import annotations

import pytest

from lightvm.errors import TinyxError
from tinyx.image import appconf
from tinyx.image.recipe import Recipe, resolve


def test_the_redis_recipe_gives_name_port_and_argv_in_order() -> None:
    r = resolve("redis-server")
    text = appconf.render(r)
    conf = appconf.parse(text)
    assert conf["name"] == ["redis-server"] and conf["port"] == ["6379"]
    assert conf["arg"] == list(r.command)
    assert "" in conf["arg"]  # --save "" survives as an empty arg= line
    assert text.startswith("#") and text.endswith("\n")
    assert "env" not in conf and "cwd" not in conf and "stop_timeout_ms" not in conf
    assert conf["prestart"] == ["1"]  # redis listens on 0.0.0.0: a pooled shell may start it early
    # its [probe], escaped for the init: rehearsed once by a prestarting pool shell
    assert conf["probe_send"] == ["PING\\r\\n"] and conf["probe_expect"] == ["+PONG"]


def test_probe_escapes_are_the_inits() -> None:
    assert appconf.escape("a\r\n\t\\ b=c\x01\x7fé") == "a\\r\\n\\t\\\\ b=c\\x01\\x7f\\xc3\\xa9"
    r = Recipe(name="app", origin="t", package=None, command=("/x",), port=0, probe=None)
    assert "probe_send" not in appconf.parse(appconf.render(r))


def test_env_cwd_and_stop_timeout_lines() -> None:
    r = Recipe(
        name="app",
        origin="test",
        package="app",
        command=("/usr/bin/app", "--x=1", "two words"),
        port=0,
        env=(("A", "1"), ("B", "x=y z")),
        cwd="/var/lib/app",
        stop_timeout_ms=2500,
        prestart=True,
    )
    conf = appconf.parse(appconf.render(r))
    assert conf["prestart"] == ["1"]
    assert conf["arg"] == ["/usr/bin/app", "--x=1", "two words"]
    assert conf["env"] == ["A=1", "B=x=y z"]
    assert conf["cwd"] == ["/var/lib/app"] and conf["stop_timeout_ms"] == ["2500"] and conf["port"] == ["0"]


def test_the_name_is_cut_to_15_bytes_for_the_boot_record() -> None:
    r = Recipe(name="a-very-long-application-name", origin="t", package=None, command=("/x",))
    assert appconf.parse(appconf.render(r))["name"] == ["a-very-long-app"]
    assert appconf.app_name("ééééééééé") == "ééééééé"  # 14 bytes: no half character


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(name="a", origin="t", package=None, command=()),
        Recipe(name="a", origin="t", package=None, command=("relative",)),
        Recipe(name="a", origin="t", package=None, command=("/x", "a\nport=1")),
        Recipe(name="a", origin="t", package=None, command=("/x",), env=(("A", "1\n"),)),
    ],
)
def test_what_would_break_the_line_format_is_refused(recipe: Recipe) -> None:
    with pytest.raises(TinyxError):
        appconf.render(recipe)


def test_parse_ignores_comments_and_blank_lines_and_refuses_other_lines() -> None:
    assert appconf.parse("# c\n\nname=x\narg=/a\n") == {"name": ["x"], "arg": ["/a"]}
    with pytest.raises(TinyxError, match="line 2"):
        appconf.parse("name=x\nnot a pair\n")
