"""Site settings, the release folder pointer and the load plan, without an engine."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from installer.archive import BundleHeader, ImageRecord, MemberRecord, layer_path
from installer.engine import EngineInventory, chain_ids
from installer.loader import plan_load
from installer.site import SiteEnv, SiteError, parse_sets, read_env, resolve_env, switch_current, write_env, write_env_files

D = ["sha256:" + c * 64 for c in "abcdef"]


def header(**release) -> BundleHeader:
    images = [
        ImageRecord(id="sha256:" + "1" * 64, diff_ids=D[:2], targets=["site/a:v1"], platform="linux/amd64"),
        ImageRecord(id="sha256:" + "2" * 64, diff_ids=D[:2] + [D[2]], targets=["site/b:v1", "b:v1"], platform="linux/amd64"),
    ]
    members = [MemberRecord(layer_path(d), d[7:], 1000) for d in D[:3]]
    release = release or {
        "variables": {"HTTP_PORT": {"default": "8080", "pattern": "^[0-9]{2,5}$"}, "LDAP_BASE_DN": {"default": "dc=a,dc=b"}},
        "secrets": {"DB_PASSWORD": {"length": 24, "alphabet": "alnum"}, "KEY": {"length": 64, "alphabet": "hex"}},
    }
    return BundleHeader(name="demo", version="v1", tool_version="t", platform="linux/amd64", created="", signer="",
                        images=images, members=members, release=release)


def test_defaults_and_generated_secrets() -> None:
    env = resolve_env(header(), {}, {})
    assert env.values["HTTP_PORT"] == "8080" and env.values["LDAP_BASE_DN"] == "dc=a,dc=b"
    assert len(env.values["DB_PASSWORD"]) == 24 and env.values["DB_PASSWORD"].isalnum()
    assert len(env.values["KEY"]) == 64 and set(env.values["KEY"]) <= set("0123456789abcdef")
    assert sorted(env.generated) == ["DB_PASSWORD", "KEY"]


def test_existing_secrets_are_kept_and_set_overrides(tmp_path: Path) -> None:
    first = resolve_env(header(), {}, {})
    write_env(tmp_path / "site.env", first, header())
    assert oct((tmp_path / "site.env").stat().st_mode & 0o777) == "0o600"
    again = resolve_env(header(), read_env(tmp_path / "site.env"), {"HTTP_PORT": "9090"})
    assert again.values["DB_PASSWORD"] == first.values["DB_PASSWORD"] and not again.generated
    assert again.values["HTTP_PORT"] == "9090" and again.changed
    same = resolve_env(header(), read_env(tmp_path / "site.env"), {})
    assert not same.changed


@pytest.mark.parametrize("sets, message", [
    ({"HTTP_PORT": "80a"}, "HTTP_PORT: '80a' does not match"),
    ({"NOPE": "1"}, "--set NOPE: not a variable of demo"),
    ({"LDAP_BASE_DN": "dc=a$(reboot)"}, "LDAP_BASE_DN: the value contains a character"),
    ({"DB_PASSWORD": "with\nnewline"}, "DB_PASSWORD: the value contains a character"),
])
def test_bad_values_are_refused_naming_the_variable(sets, message) -> None:
    with pytest.raises(SiteError, match=message.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")):
        resolve_env(header(), {}, sets)


def test_parse_sets_needs_key_equals_value() -> None:
    assert parse_sets(["A=1", "B_2=x=y"]) == {"A": "1", "B_2": "x=y"}
    with pytest.raises(SiteError, match="expected KEY=VALUE"):
        parse_sets(["lower=1"])


def test_switch_current_keeps_previous(tmp_path: Path) -> None:
    one, two = tmp_path / "releases" / "v1", tmp_path / "releases" / "v2"
    one.mkdir(parents=True)
    two.mkdir()
    assert switch_current(tmp_path, one) is None
    assert switch_current(tmp_path, two) == one.resolve()
    assert os.readlink(tmp_path / "current") == "releases/v2" and os.readlink(tmp_path / "previous") == "releases/v1"


def test_load_plan_skips_present_images_and_chains() -> None:
    h = header()
    nothing = EngineInventory(image_ids=set(), chains=set(), tags={})
    full = plan_load(h, nothing)
    assert len(full.images) == 2 and full.layers == {layer_path(d) for d in D[:3]}
    base_present = EngineInventory(image_ids={h.images[0].id}, chains=set(chain_ids(D[:2])), tags={})
    thin = plan_load(h, base_present)
    assert [i.id for i in thin.images] == [h.images[1].id] and thin.layers == {layer_path(D[2])}
    assert thin.layer_bytes == 1000
    every_blob = plan_load(h, base_present, send_every_layer=True)
    assert every_blob.layers == {layer_path(d) for d in D[:3]}


def test_same_diff_id_on_another_chain_is_not_present() -> None:
    h = header()
    # the engine has layer D[1] but on top of another base: its chain differs, so it must be sent
    other = EngineInventory(image_ids=set(), chains=set(chain_ids([D[5], D[1]])), tags={})
    assert layer_path(D[1]) in plan_load(h, other).layers


def test_a_value_built_from_others_is_filled_in_on_the_site() -> None:
    env = resolve_env(header(variables={
        "DB_USER": {"default": "app"},
        "DATABASE_URL": {"default": "", "template": "postgresql://${DB_USER}:${DB_PASSWORD}@${DB_HOST:-db}/app"},
    }, secrets={"DB_PASSWORD": {"length": 16}}), {}, {})
    assert env.values["DATABASE_URL"] == f"postgresql://app:{env.values['DB_PASSWORD']}@db/app"
    again = resolve_env(header(variables={"DB_USER": {"default": "app"}, "URL": {"default": "", "template": "x-${DB_USER}"}}),
                        {"URL": "stale", "DB_USER": "app"}, {"DB_USER": "ops"})
    assert again.values["URL"] == "x-ops"  # recomputed from the current values, never kept stale


def test_a_required_variable_must_be_given_on_the_site() -> None:
    required = header(variables={"LICENSE_HOST": {"default": "", "required": True}})
    with pytest.raises(SiteError, match="LICENSE_HOST: demo needs a value for it; give one with --set LICENSE_HOST=VALUE"):
        resolve_env(required, {}, {})
    assert resolve_env(required, {}, {"LICENSE_HOST": "lic.lab"}).values["LICENSE_HOST"] == "lic.lab"


def test_env_files_hold_only_their_own_variables_and_stay_inside_the_release(tmp_path: Path) -> None:
    values = {"A": "1", "SECRET": "s3", "OTHER": "x"}
    write_env_files(tmp_path, {"config/app.env": ["A", "SECRET"]}, values)
    written = tmp_path / "config" / "app.env"
    assert written.read_text() == "A=1\nSECRET=s3\n" and oct(written.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SiteError, match="points outside"):
        write_env_files(tmp_path, {"../escape.env": ["A"]}, values)
    with pytest.raises(SiteError, match="is not a variable name"):
        write_env_files(tmp_path, {"x.env": ["A\nINJECTED=1"]}, values)
    assert not (tmp_path.parent / "escape.env").exists()


def test_children_get_none_of_the_installers_python_settings() -> None:
    from installer.childenv import child_environment

    env = child_environment({"PATH": "/usr/bin", "PYTHONPATH": "/opt/kit/lib", "PYTHONHOME": "/x", "DOCKER_HOST": "unix:///s",
                             "LD_LIBRARY_PATH": "/tmp/_MEI123", "LD_LIBRARY_PATH_ORIG": "/usr/local/lib"})
    assert env == {"PATH": "/usr/bin", "DOCKER_HOST": "unix:///s", "LD_LIBRARY_PATH": "/usr/local/lib"}


# issue 12, finding 4: the site file stays private, values stay on their line, errors never show a secret

SECRET = "hunter2-not-to-be-shown"


def test_a_site_file_restored_readable_by_others_is_made_0600_again_saying_so(tmp_path: Path, capsys) -> None:
    path = tmp_path / "site.env"
    write_env(path, resolve_env(header(), {}, {}), header())
    path.chmod(0o644)
    said: list[str] = []
    values = read_env(path, said.append)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and values["HTTP_PORT"] == "8080"
    assert said == [f"WARNING: {path} holds the site's secrets and was mode 0644; it is 0600 again"]
    read_env(path, said.append)
    assert len(said) == 1  # private now: nothing more to say
    path.chmod(0o640)
    read_env(path)  # the default warning goes to stderr
    assert "was mode 0640; it is 0600 again" in capsys.readouterr().err
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_site_file_is_written_0600_whatever_it_was(tmp_path: Path) -> None:
    path = tmp_path / "site.env"
    path.write_text("HTTP_PORT=8080\n")
    path.chmod(0o666)
    write_env(path, resolve_env(header(), read_env(path, lambda _: None), {}), header())
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_site_file_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.env"
    elsewhere.write_text("HTTP_PORT=8080\n")
    elsewhere.chmod(0o644)
    os.symlink(elsewhere, tmp_path / "site.env")
    with pytest.raises(SiteError, match="not a symlink"):
        read_env(tmp_path / "site.env")
    assert oct(elsewhere.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("character", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\r", "\u200b", "\xa0", "\ufeff"])
@pytest.mark.parametrize("name", ["LDAP_BASE_DN", "DB_PASSWORD"])
def test_a_value_with_a_line_break_or_an_unprintable_character_is_refused_unshown(name: str, character: str) -> None:
    value = f"{SECRET}{character}INJECTED=1"
    with pytest.raises(SiteError) as refused:
        resolve_env(header(), {}, {name: value})
    message = str(refused.value)
    assert message.startswith(f"{name}: the value contains a character the environment file cannot hold safely")
    assert SECRET not in message and "INJECTED" not in message


def test_every_value_reads_back_as_written_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "site.env"
    env = resolve_env(header(), {}, {"LDAP_BASE_DN": "dc=ünïcode,dc=b c", "DB_PASSWORD": "p@ss:word/=!"})
    write_env(path, env, header())
    assert read_env(path) == env.values


def test_a_line_separator_in_the_site_file_does_not_split_a_value(tmp_path: Path) -> None:
    """An older site file with U+2028 in a value: read as one value, then refused naming the variable only."""
    path = tmp_path / "site.env"
    path.write_bytes(f"LDAP_BASE_DN=dc=a\u2028HTTP_PORT=1\nHTTP_PORT=8080\nOLD_TOKEN={SECRET}\x85X=1\n".encode())
    path.chmod(0o600)
    existing = read_env(path)
    assert existing == {"LDAP_BASE_DN": "dc=a\u2028HTTP_PORT=1", "HTTP_PORT": "8080", "OLD_TOKEN": f"{SECRET}\x85X=1"}
    with pytest.raises(SiteError, match="^LDAP_BASE_DN: the value contains a character") as refused:
        resolve_env(header(), existing, {})
    assert "dc=a" not in str(refused.value)
    del existing["LDAP_BASE_DN"]
    with pytest.raises(SiteError, match="^OLD_TOKEN: the value contains a character.*remove its line in site.env") as refused:
        resolve_env(header(), existing, {})  # a setting kept from an earlier release is checked too
    assert SECRET not in str(refused.value)
    with pytest.raises(SiteError, match="^OLD_TOKEN: the value contains"):
        write_env(path, SiteEnv(values=existing, generated=[], changed=True), header())


def test_a_pattern_mismatch_shows_a_plain_variables_value_never_a_secret(tmp_path: Path) -> None:
    built = header(variables={"DB_USER": {"default": "app"},
                              "DATABASE_URL": {"default": "", "template": "postgresql://${DB_USER}:${DB_PASSWORD}@db/app",
                                               "pattern": "^mysql://.*"}},
                   secrets={"DB_PASSWORD": {"length": 16}})
    with pytest.raises(SiteError, match=r"^DATABASE_URL: the value does not match the pattern '\^mysql://\.\*'") as refused:
        resolve_env(built, {"DB_PASSWORD": SECRET}, {})
    assert SECRET not in str(refused.value)
    with pytest.raises(SiteError, match="^DATABASE_URL: the value does not match") as refused:
        resolve_env(built, {}, {"DATABASE_URL": f"postgresql://app:{SECRET}@db/app"})
    assert SECRET not in str(refused.value)
    with pytest.raises(SiteError, match="HTTP_PORT: '80a' does not match"):
        resolve_env(header(), {}, {"HTTP_PORT": "80a"})


@pytest.mark.parametrize("item", [f"lower={SECRET}", f"{SECRET}", f"BAD-KEY={SECRET}"])
def test_a_malformed_set_never_shows_its_value(item: str) -> None:
    with pytest.raises(SiteError, match="expected KEY=VALUE") as refused:
        parse_sets([item])
    assert SECRET not in str(refused.value)


def test_a_check_that_must_change_nothing_only_warns_about_a_wide_site_file(tmp_path: Path) -> None:
    path = tmp_path / "site.env"
    path.write_text("HTTP_PORT=8080\n")
    path.chmod(0o644)
    said: list[str] = []
    assert read_env(path, said.append, fix_mode=False) == {"HTTP_PORT": "8080"}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert said == [f"WARNING: {path} holds the site's secrets and is mode 0644, readable by others; "
                    f"the install makes it 0600 (or run: chmod 600 {path})"]
