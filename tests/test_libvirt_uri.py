"""libvirt_uri: what is accepted and refused, what libvirt and Vagrant are given (no host needed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from labtest import make_facts, make_settings

from lab.config import libvirt_uri as uris
from lab.core.errors import SettingError
from lab.host import sshhost
from lab.machine.resolve import resolve
from lab.render.lab import render_all


@pytest.mark.parametrize(("text", "remote", "label"), [
    ("qemu:///system", False, "local"),
    ("qemu+ssh://lab-host/system", True, "lab-host:22"),
    ("qemu+ssh://root@10.0.0.5:2222/system", True, "root@10.0.0.5:2222"),
    ("qemu+ssh://ci_runner@host.example.org/system?keyfile=/k/id&known_hosts=/k/hosts", True,
     "ci_runner@host.example.org:22"),
])
def test_accepted(text: str, remote: bool, label: str) -> None:
    uri = uris.parse(text)
    assert uri.remote is remote and uri.host_label == label


@pytest.mark.parametrize(("text", "words"), [
    ("qemu+tcp://h/system", "unencrypted"),
    ("qemu+tls://h/system", "certificate"),
    ("qemu+libssh2://h/system", "use qemu+ssh"),
    ("xen:///system", "not supported"),
    ("qemu:///session", "isolated network"),
    ("qemu+ssh://h/session", "isolated network"),
    ("qemu+ssh://h/", "must be /system"),
    ("qemu+ssh://h", "must be /system"),
    ("qemu://h/system", "TLS transport"),
    ("qemu:///system?keyfile=/k", "no parameters"),
    ("qemu+ssh://h/system?command=/bin/sh", "not allowed"),
    ("qemu+ssh://h/system?no_verify=1", "not allowed"),
    ("qemu+ssh://h/system?keyfile=relative", "absolute path"),
    ("qemu+ssh://h/system?keyfile=/a/../etc/shadow", "absolute path"),
    ("qemu+ssh://h/system?keyfile=/a&keyfile=/b", "twice"),
    ("qemu+ssh://user:secret@h/system", "no password"),
    ("qemu+ssh://Bad!User@h/system", "login name"),
    ("qemu+ssh://h_x/system", "host name"),
    ("qemu+ssh://h:0/system", "outside 1-65535"),
    ("qemu+ssh://h:99999/system", "does not parse"),
    ("qemu+ssh://h/system#x", "fragment"),
    ("qemu+ssh://h/system;reboot", "shell characters"),
    ("qemu+ssh://$(id)/system", "shell characters"),
    ("", "shell characters"),
])
def test_refused(text: str, words: str) -> None:
    with pytest.raises(uris.BadUri, match=re.escape(words)):
        uris.parse(text)


def test_a_bad_uri_names_the_setting_and_its_source(tmp_path: Path) -> None:
    with pytest.raises(SettingError) as info:
        make_settings(tmp_path, target="bookworm", libvirt_uri="qemu+tcp://h/system")
    assert info.value.message.startswith("setting 'libvirt_uri' (from --libvirt-uri): 'qemu+tcp://h/system'")
    assert "use qemu+ssh" in info.value.message and "\n" not in info.value.message


def test_the_keyfile_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="keyfile /nowhere/key does not exist"):
        make_settings(tmp_path, target="bookworm", libvirt_uri="qemu+ssh://h/system?keyfile=/nowhere/key")


def test_from_the_environment(tmp_path: Path) -> None:
    from lab.config import settings

    with pytest.raises(SettingError, match=r"\(from LAB_LIBVIRT_URI\)"):
        settings.load(environ={"LAB_LIBVIRT_URI": "qemu:///session"}, flags={"target": "bookworm"},
                      project_dir=tmp_path)
    s = settings.load(environ={"LAB_LIBVIRT_URI": "qemu+ssh://h/system"}, flags={"target": "bookworm"},
                      project_dir=tmp_path)
    assert s.libvirt.remote and s.libvirt.host == "h"


def test_libvirt_gets_the_wrapper_and_no_known_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    key = tmp_path / "key"
    key.write_text("k")
    uri = uris.parse(f"qemu+ssh://root@127.0.0.1:2222/system?keyfile={key}&known_hosts={key}")
    access = sshhost.access(uri, timeout=7)
    assert access.strict and access.known_hosts == key
    assert access.libvirt_uri == (f"qemu+ssh://root@127.0.0.1:2222/system?keyfile={key}"
                                  f"&command={access.wrapper}&no_tty=1")
    assert access.wrapper.parent == tmp_path / ".lab" / "hosts"
    text = access.wrapper.read_text()
    assert f"UserKnownHostsFile={key}" in text and "StrictHostKeyChecking=yes" in text
    assert "ConnectTimeout=7" in text and "GlobalKnownHostsFile=/dev/null" in text
    assert subprocess.run(["sh", "-n", str(access.wrapper)], check=False).returncode == 0
    assert access.proxy_command == f"{access.wrapper} -p 2222 -l root -i {key} -W %h:%p 127.0.0.1"
    tofu = sshhost.access(uris.parse("qemu+ssh://h/system"), timeout=7)
    assert not tofu.strict and tofu.known_hosts == tmp_path / ".lab" / "hosts" / "known_hosts"
    assert "StrictHostKeyChecking=accept-new" in tofu.wrapper.read_text() and tofu.known_hosts.is_file()
    assert tofu.wrapper != access.wrapper


def test_the_vagrantfile_carries_the_uri_and_the_proxy(tmp_path: Path) -> None:
    s = make_settings(tmp_path, target="bookworm")
    local = render_all(resolve(s), make_facts())["Vagrantfile"]
    assert "lv.uri = 'qemu:///system'" in local and "proxy_command" not in local
    remote = render_all(resolve(s), make_facts(libvirt_uri="qemu+ssh://h/system?command=/x/it's",
                                      ssh_proxy="/x/ssh -W %h:%p h"))["Vagrantfile"]
    assert "lv.uri = 'qemu+ssh://h/system?command=/x/it\\'s'" in remote
    assert "m.ssh.proxy_command = '/x/ssh -W %h:%p h'" in remote
