"""Settings from the environment, a .env file and flags, checked at start."""

from __future__ import annotations

import pytest

from config import ConfigError, Settings, load_settings


def test_defaults():
    settings = load_settings([], environ={}, env_file=None)
    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert settings.iss_inject == "user"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.iss_timeout == 2.0 and settings.drain_timeout == 10.0
    assert settings.use_openai is False  # no key: the built-in responder


def test_env_file_flags_and_precedence(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=6000\nLLM_MODEL=from-dotenv\nISS_INJECT=system\nOPENAI_API_KEY=sk-dotenv\n")
    settings = load_settings(["--host", "0.0.0.0"], environ={"LLM_MODEL": "from-env"}, env_file=env_file)
    assert settings.port == 6000
    assert settings.host == "0.0.0.0"
    assert settings.llm_model == "from-env"  # the real environment wins over .env
    assert settings.iss_inject == "system"
    assert settings.use_openai is True
    assert load_settings(["--port", "7001"], environ={"PORT": "1"}, env_file=env_file).port == 7001


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ISS_INJECT": "sideways"}, "ISS_INJECT"),
        ({"PORT": "http"}, "PORT"),
        ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES"),
        ({"CONSOLE_ENABLED": "maybe"}, "CONSOLE_ENABLED"),
        ({"LLM_BACKEND": "gpt"}, "LLM_BACKEND"),
    ],
)
def test_invalid_values_name_the_setting(env, names):
    with pytest.raises(ConfigError, match=names):
        load_settings([], environ=env, env_file=None)


def test_bundled_elements_can_be_turned_off():
    assert load_settings([], environ={}, env_file=None).bundled_tle.is_file()
    assert load_settings([], environ={"BUNDLED_TLE": ""}, env_file=None).bundled_tle is None


def test_backend_choice():
    assert Settings(llm_backend="openai").use_openai is True
    assert Settings(llm_backend="builtin", openai_api_key="sk-x").use_openai is False
    assert Settings(openai_api_key="sk-x").use_openai is True


def test_secrets_stay_out_of_repr():
    text = repr(Settings(openai_api_key="sk-secret-1", server_api_key="srv-secret-2", console_token="tok-3"))
    assert "sk-secret-1" not in text and "srv-secret-2" not in text and "tok-3" not in text


def test_loopback_detection():
    assert not Settings(host="127.0.0.1").listens_beyond_loopback
    assert not Settings(host="::1").listens_beyond_loopback
    assert Settings(host="0.0.0.0").listens_beyond_loopback


# ---- workers and the cluster (issue 11) ----


def test_workers_from_the_environment_or_the_flag():
    assert load_settings([], environ={}, env_file=None).worker_count == 1
    assert load_settings([], environ={"WORKERS": "3"}, env_file=None).worker_count == 3
    assert load_settings(["--workers", "2"], environ={"WORKERS": "3"}, env_file=None).worker_count == 2
    assert load_settings(["--workers", "0"], environ={}, env_file=None).worker_count >= 1  # one per core
    for bad in ({"WORKERS": "-1"}, {"WORKERS": "many"}):
        with pytest.raises(ConfigError, match="WORKERS"):
            load_settings([], environ=bad, env_file=None)
    with pytest.raises(ConfigError, match="--workers"):
        load_settings(["--workers", "-2"], environ={}, env_file=None)


def test_redis_url_is_checked_and_kept_out_of_repr():
    assert load_settings([], environ={"REDIS_URL": ""}, env_file=None).redis_url is None
    settings = load_settings([], environ={"REDIS_URL": "redis://:pw-secret@127.0.0.1:6379/0"}, env_file=None)
    assert settings.redis_url == "redis://:pw-secret@127.0.0.1:6379/0"
    assert "pw-secret" not in repr(settings)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_settings([], environ={"REDIS_URL": "http://127.0.0.1:6379"}, env_file=None)


# ---- the chat path's limits (issue 8) ----


def test_first_token_timeout_and_supersede():
    defaults = load_settings([], environ={}, env_file=None)
    assert defaults.first_token_timeout is None and defaults.supersede == "off"
    settings = load_settings([], environ={"FIRST_TOKEN_TIMEOUT": "2.5", "SUPERSEDE": "Conversation"}, env_file=None)
    assert settings.first_token_timeout == 2.5 and settings.supersede == "conversation"
    for off in ("0", "off", ""):
        assert load_settings([], environ={"FIRST_TOKEN_TIMEOUT": off}, env_file=None).first_token_timeout is None
    for name, bad in (("FIRST_TOKEN_TIMEOUT", "-1"), ("FIRST_TOKEN_TIMEOUT", "soon"), ("SUPERSEDE", "always")):
        with pytest.raises(ConfigError, match=name):
            load_settings([], environ={name: bad}, env_file=None)


def test_upstream_headers_are_a_json_object_and_a_bad_one_is_named_not_echoed():
    settings = load_settings([], environ={"UPSTREAM_HEADERS": '{"X-Title": "ISS", "HTTP-Referer": "https://a.example"}',
                                          "OPENAI_ORG_ID": "org-1"}, env_file=None)
    assert settings.upstream_headers == (("X-Title", "ISS"), ("HTTP-Referer", "https://a.example"))
    assert settings.openai_org_id == "org-1"
    assert "https://a.example" not in repr(settings)
    for bad in ('["X-Title"]', "X-Title: ISS", '{"Bad Name": "v"}', '{"Host": "evil"}',
                '{"X-Key": "secret-value\\r\\nInjected: 1"}', '{"X-Key": 5}'):
        with pytest.raises(ConfigError) as error:
            load_settings([], environ={"UPSTREAM_HEADERS": bad}, env_file=None)
        assert str(error.value).startswith("UPSTREAM_HEADERS:")
        assert "secret-value" not in str(error.value)
