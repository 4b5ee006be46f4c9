"""``meterhub web`` and ``meterhub web create-user`` as a user runs them, and the helpers the
demo uses (start_server, ensure_demo_user)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import aiohttp
import pytest
import requests
from web_helpers import free_port

from meterhub.settings import DATABASE_URL_ENV, MQTT_URL_ENV
from web import ensure_demo_user, start_server


def _env(db_url: str, lang: str = "en") -> dict[str, str]:
    """The machine's environment in a known language (its LANG might be zh_CN)."""
    env = {**os.environ, DATABASE_URL_ENV: db_url, "METERHUB_LANG": lang}
    env.pop(MQTT_URL_ENV, None)
    return env


def _meterhub(*args: str, db_url: str, lang: str = "en") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args],
                          env=_env(db_url, lang), capture_output=True, text=True, timeout=60)


def test_create_user_prints_a_password_that_logs_in(db_url: str, served: str) -> None:
    out = _meterhub("web", "create-user", "--name", "li.wei", "--role", "engineer", "--token",
                    db_url=db_url)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    password, token = lines["user li.wei (engineer) password"], lines["API token"]
    me = requests.post(f"{served}/api/v1/session", json={"name": "li.wei",
                                                         "password": password}, timeout=10)
    assert me.status_code == 200 and me.json()["user"]["role"] == "engineer"
    by_token = requests.get(f"{served}/api/v1/me", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
    assert by_token.json()["user"]["name"] == "li.wei"

    again = _meterhub("web", "create-user", "--name", "li.wei", "--role", "viewer",
                      db_url=db_url)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = _meterhub("web", "create-user", "--name", "x", "--role", "root", db_url=db_url)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_cli_speaks_chinese_when_asked(db_url: str) -> None:
    """METERHUB_LANG (or LANG=zh_CN.UTF-8) and --lang choose the language of the messages."""
    out = _meterhub("web", "create-user", "--name", "wang.fang", "--role", "viewer",
                    db_url=db_url, lang="zh-CN")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("用户 wang.fang（viewer）密码：")
    again = _meterhub("--lang", "zh-CN", "web", "create-user", "--name", "wang.fang",
                      "--role", "viewer", db_url=db_url)
    assert again.returncode == 1
    assert "名为 'wang.fang' 的用户已存在" in again.stderr
    english = _meterhub("--lang", "en", "web", "create-user", "--name", "wang.fang",
                        "--role", "viewer", db_url=db_url, lang="zh-CN")
    assert "a user named 'wang.fang' already exists" in english.stderr


def test_web_command_serves_page_and_api(db_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "web", "--port", str(port)],
        env=_env(db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "meterhub web did not answer"
            time.sleep(0.3)
        page = requests.get(base, timeout=5)
        assert page.status_code == 200 and "<title>meterhub</title>" in page.text
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert requests.get(f"{base}/static/app.js", timeout=5).status_code == 200
        assert requests.get(f"{base}/api/v1/gateways", timeout=5).status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in err
    assert "meterhub web create-user --name NAME --role admin" in err


async def test_demo_helpers(db_url: str) -> None:
    user, password = ensure_demo_user(db_url)
    user2, password2 = ensure_demo_user(db_url)
    assert user == user2 == "admin" and password != password2
    server = await start_server(db_url)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        # unsafe: aiohttp keeps no cookies for bare IP addresses otherwise (browsers do)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            old = await http.post(f"{server.url}api/v1/session",
                                  json={"name": user, "password": password})
            assert old.status == 401  # only the newest demo password works
            new = await http.post(f"{server.url}api/v1/session",
                                  json={"name": user, "password": password2})
            assert (await new.json())["user"]["role"] == "admin"
            gws = await http.get(f"{server.url}api/v1/gateways")
            assert gws.status == 200
        taken = int(server.url.rsplit(":", 1)[1].rstrip("/"))
        with pytest.raises(OSError):
            await start_server(db_url, port=taken)
    finally:
        await server.close()
