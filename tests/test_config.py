"""
Options, defaults and validation: the command line as users and scripts see it.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy import ConfigError, ProxyConfig
from sora2proxy._config import base_of, upstream_from_environment
from sora2proxy._tap import Options


def parse(*argv: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ=environ or {})
    options.parseOptions(list(argv))
    return options


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With no options the proxy uses the documented defaults."""
        options = parse()
        config = options.config
        assert config is not None
        self.assertEqual(options.listen, ["tcp:3200"])
        self.assertEqual(config.upstream, "http://localhost:3101/api")
        self.assertEqual(config.prefix, "/api/proxy")
        self.assertEqual(config.health_path, "/api/health")
        self.assertEqual(config.health_interval, 5)
        self.assertEqual(config.health_timeout, 3)
        self.assertEqual(config.attempts, 3)
        self.assertEqual(config.backoff, 1)
        self.assertEqual(config.timeout, 30)
        self.assertEqual(config.suggestion, "Run: npm run dev:api")
        self.assertFalse(config.dev)
        self.assertFalse(config.retry_all_methods)
        # The command line's access log follows twistd's own log (standard output outside
        # twistd, as under -n); ProxyConfig's default, for embedding, stays log events.
        self.assertEqual(config.access_log, "-")
        self.assertEqual(ProxyConfig().access_log, "log")
        self.assertEqual(config, attrs.evolve(ProxyConfig(), access_log="-"))

    def test_every_option(self) -> None:
        """Every option reaches the configuration."""
        options = parse(
            "--listen", "tcp:8080:interface=127.0.0.1", "--listen", "unix:/tmp/s2p.sock",
            "--upstream", "https://api.example.test:8443/v2/",
            "--prefix", "/", "--health-path", "", "--health-interval", "2.5",
            "--health-timeout", "1", "--attempts", "5", "--backoff", "0",
            "--timeout", "12", "--suggestion", "Run: make api", "--dev",
            "--retry-all-methods",
        )  # fmt: skip
        config = options.config
        assert config is not None
        self.assertEqual(options.listen, ["tcp:8080:interface=127.0.0.1", "unix:/tmp/s2p.sock"])
        self.assertEqual(base_of(config.upstream), b"https://api.example.test:8443/v2")
        self.assertEqual(config.prefix_bytes, b"")
        self.assertIsNone(config.health_url_of(config.upstream))
        self.assertEqual((config.health_interval, config.health_timeout), (2.5, 1))
        self.assertEqual((config.attempts, config.backoff, config.timeout), (5, 0, 12))
        self.assertEqual(config.suggestion, "Run: make api")
        self.assertTrue(config.dev)
        self.assertTrue(config.retry_all_methods)

    def test_health_url_on_origin(self) -> None:
        """The health path is taken on the upstream's origin, not under its base path."""
        config = ProxyConfig(upstream="http://127.0.0.1:3101/api/v1")
        self.assertEqual(config.health_url_of(config.upstream), b"http://127.0.0.1:3101/api/health")

    def test_upstream_from_environment(self) -> None:
        """$SORA2PROXY_UPSTREAM wins, then $NEXT_PUBLIC_API_URL plus /api, then the default."""
        self.assertEqual(
            upstream_from_environment(
                {"SORA2PROXY_UPSTREAM": "http://a:1/x", "NEXT_PUBLIC_API_URL": "http://b:2"}
            ),
            "http://a:1/x",
        )
        self.assertEqual(upstream_from_environment({"NEXT_PUBLIC_API_URL": "http://b:2/"}), "http://b:2/api")
        self.assertEqual(upstream_from_environment({}), "http://localhost:3101/api")
        options = parse(environ={"NEXT_PUBLIC_API_URL": "http://b:2"})
        assert options.config is not None
        self.assertEqual(options.config.upstream, "http://b:2/api")
        options = parse("--upstream", "http://c:3/api", environ={"SORA2PROXY_UPSTREAM": "http://a:1"})
        assert options.config is not None
        self.assertEqual(options.config.upstream, "http://c:3/api")


class ValidationTests(SynchronousTestCase):
    def assert_rejected(self, option: str, *argv: str) -> str:
        with self.assertRaises(SystemExit) as caught:
            parse(*argv)
        message = str(caught.exception.code)
        self.assertIn(option, message)
        self.assertEqual(message.count("\n"), 0)
        return message

    def test_bad_values(self) -> None:
        """Each bad value stops start-up with one line naming its option."""
        cases = [
            ("--timeout", "--timeout", "-1"),
            ("--timeout", "--timeout", "0"),
            ("--timeout", "--timeout", "soon"),
            ("--timeout", "--timeout", "nan"),
            ("--attempts", "--attempts", "0"),
            ("--attempts", "--attempts", "2.5"),
            ("--backoff", "--backoff", "-1"),
            ("--health-interval", "--health-interval", "0"),
            ("--health-timeout", "--health-timeout", "-3"),
            ("--upstream", "--upstream", "localhost:3101/api"),
            ("--upstream", "--upstream", "ftp://host/api"),
            ("--upstream", "--upstream", "http:///api"),
            ("--upstream", "--upstream", "http://host:99999/api"),
            ("--upstream", "--upstream", "http://host/api?x=1"),
            ("--upstream", "--upstream", "http://user:pw@host/api"),
            ("--prefix", "--prefix", "api/proxy"),
            ("--prefix", "--prefix", "/api?x"),
            ("--health-path", "--health-path", "health"),
            ("--listen", "--listen", "carrier-pigeon:3200"),
            ("--listen", "--listen", "tcp:notaport"),
            ("--upstream-idle-timeout", "--upstream-idle-timeout", "0"),
            ("--access-log", "--access-log", "/no/such/dir/access.log"),
            ("--access-log", "--access-log", "/tmp"),
        ]
        for option, *argv in cases:
            self.assert_rejected(option, *argv)

    def test_config_error_names_option(self) -> None:
        """Building a ProxyConfig in Python with a bad value raises ConfigError naming the option."""
        with self.assertRaises(ConfigError) as caught:
            ProxyConfig(timeout=-1)
        self.assertEqual(caught.exception.option, "--timeout")
        with self.assertRaises(ConfigError):
            ProxyConfig(attempts=True)  # type: ignore[arg-type]
        with self.assertRaises(ConfigError):
            ProxyConfig(suggestion=3)  # type: ignore[arg-type]
        with self.assertRaises(ConfigError):
            ProxyConfig(upstream="http://host/a\nb")
