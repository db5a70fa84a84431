"""Configuration discovery, interpolation and strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_mcp.config import load_settings
from crm_mcp.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "crm-mcp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_no_configuration_gives_one_local_backend(tmp_path: Path) -> None:
    settings = load_settings(env={"CRM_MCP_HOME": str(tmp_path / "h")}, cwd=tmp_path)
    assert settings.source is None
    assert list(settings.backends) == ["local"]
    assert settings.backends["local"].vendor == "local"
    assert settings.default_backend == "local"
    assert settings.home == tmp_path / "h"
    assert settings.files.roots == (tmp_path.resolve(),)


def test_home_defaults_to_platform_data_dir(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    assert "crm-mcp" in str(settings.home)


def test_discovers_file_in_working_directory(tmp_path: Path) -> None:
    write(tmp_path, "[limits]\ninline_bytes = 1000\n")
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.source == tmp_path / "crm-mcp.toml"
    assert settings.limits.inline_bytes == 1000


def test_environment_variable_beats_working_directory(tmp_path: Path) -> None:
    write(tmp_path, "[limits]\ninline_bytes = 1000\n")
    other = write(tmp_path, "[limits]\ninline_bytes = 2000\n", "other.toml")
    settings = load_settings(env={"CRM_MCP_CONFIG": str(other)}, cwd=tmp_path)
    assert settings.limits.inline_bytes == 2000


def test_explicit_path_beats_environment(tmp_path: Path) -> None:
    env_file = write(tmp_path, "[limits]\ninline_bytes = 1000\n", "env.toml")
    explicit = write(tmp_path, "[limits]\ninline_bytes = 3000\n", "explicit.toml")
    settings = load_settings(str(explicit), env={"CRM_MCP_CONFIG": str(env_file)}, cwd=tmp_path)
    assert settings.limits.inline_bytes == 3000


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: configuration file not found"):
        load_settings(str(tmp_path / "nope.toml"), env={}, cwd=tmp_path)


def test_interpolates_environment_variables(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.mine]\nvendor = "local"\npath = "${STORE}/x"\n')
    settings = load_settings(str(path), env={"STORE": "/data"}, cwd=tmp_path)
    assert settings.backends["mine"].path == "/data/x"  # type: ignore[attr-defined]


def test_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.mine]\nvendor = "local"\npath = "/a$${NOT}"\n')
    settings = load_settings(str(path), env={}, cwd=tmp_path)
    assert settings.backends["mine"].path == "/a${NOT}"  # type: ignore[attr-defined]


def test_missing_environment_variable_names_file_backend_key_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.mine]\nvendor = "local"\npath = "${NO_SUCH_VAR}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={}, cwd=tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert "[backends.mine] path" in message
    assert "NO_SUCH_VAR is not set" in message


def test_unknown_backend_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.mine]\nvendor = "local"\npasword = "x"\n')
    with pytest.raises(ConfigError, match=r"\[backends\.mine\] pasword: unknown key"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_unknown_vendor_lists_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.x]\nvendor = "salesforce"\n')
    with pytest.raises(ConfigError, match=r"\[backends\.x\] vendor: unknown vendor 'salesforce'.*local"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_missing_vendor_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[backends.x]\npath = '/tmp'\n")
    with pytest.raises(ConfigError, match=r"\[backends\.x\] vendor: missing required key"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "defualt_backend = 'x'\n")
    with pytest.raises(ConfigError, match="unknown key 'defualt_backend' at the top level"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_unknown_limits_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\ninline = 5\n")
    with pytest.raises(ConfigError, match=r"\[limits\] inline: unknown key"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_bad_limit_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_transfer_bytes = 0\n")
    with pytest.raises(ConfigError, match=r"\[limits\] max_transfer_bytes: Input should be greater than or equal to 1"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits\n")
    with pytest.raises(ConfigError, match=r"crm-mcp\.toml: not valid TOML"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_default_backend_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_backend = "creatio"\n[backends.a]\nvendor = "local"\n')
    with pytest.raises(ConfigError, match="default_backend 'creatio' is not a configured backend"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_only_backend_is_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.store]\nvendor = "local"\n')
    assert load_settings(str(path), env={}, cwd=tmp_path).default_backend == "store"


def test_several_backends_without_default_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.a]\nvendor = "local"\n[backends.b]\nvendor = "local"\n')
    with pytest.raises(ConfigError, match="default_backend is required"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_backend_name_must_be_uri_safe(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends."my crm"]\nvendor = "local"\n')
    with pytest.raises(ConfigError, match=r"\[backends\.my crm\]: backend names may use only"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_roots_are_resolved_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    path = write(tmp_path, '[files]\nroots = ["docs"]\n')
    assert load_settings(str(path), env={}, cwd=Path("/")).files.roots == ((tmp_path / "docs").resolve(),)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[files]\nroots = ["missing"]\n')
    with pytest.raises(ConfigError, match=r"\[files\] roots: 'missing' is not an existing folder"):
        load_settings(str(path), env={}, cwd=tmp_path)


def test_vendor_missing_required_key_names_file_backend_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.crm]\nvendor = "creatio"\nusername = "u"\npassword = "p"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={}, cwd=tmp_path)
    assert str(caught.value) == f"{path}: [backends.crm] url: missing required key"


def test_bad_url_names_file_backend_and_key_without_pydantic_noise(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[backends.crm]\nvendor = "creatio"\nurl = "crm.example.com"\nusername = "u"\npassword = "p"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={}, cwd=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: [backends.crm] url: must be an http:// or https:// URL")
    assert "Value error" not in message


def test_a_rule_about_the_whole_table_names_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[backends.espo]\nvendor = "espocrm"\nurl = "https://crm.example.com"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={}, cwd=tmp_path)
    assert str(caught.value).startswith(f"{path}: [backends.espo]: no credentials")


def test_secret_from_the_environment_reaches_the_backend_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[backends.crm]\nvendor = "creatio"\nurl = "https://crm.example.com"\n'
        'username = "Supervisor"\npassword = "${CREATIO_PASSWORD}"\n',
    )
    settings = load_settings(str(path), env={"CREATIO_PASSWORD": "pa$$word"}, cwd=tmp_path)
    password = settings.backends["crm"].password  # type: ignore[attr-defined]
    assert getattr(password, "get_secret_value", lambda: password)() == "pa$$word"


def test_empty_backends_table_gives_the_local_backend(tmp_path: Path) -> None:
    path = write(tmp_path, "[backends]\n")
    settings = load_settings(str(path), env={"CRM_MCP_HOME": str(tmp_path / "h")}, cwd=tmp_path)
    assert list(settings.backends) == ["local"]
    assert settings.default_backend == "local"
