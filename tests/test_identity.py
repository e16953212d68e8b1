"""
Who a caller is: the --identity-header values (Authorization, Cookie and
X-Api-Key by default), else the client's address; and the options that set it.
"""

from __future__ import annotations

import hashlib

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from sora2proxy._config import ConfigError, ProxyConfig
from sora2proxy._identity import IdentityRule
from sora2proxy._tap import Options

HOME = IPv4Address("TCP", "192.0.2.7", 50123)


def headers(**sent: str) -> Headers:
    return Headers({name.replace("_", "-"): [value] for name, value in sent.items()})


class IdentityTests(SynchronousTestCase):
    rule = IdentityRule()

    def test_api_keys_differ(self) -> None:
        """Two X-Api-Key values are two callers; the same value from two addresses is one."""
        alice = self.rule.identify(headers(X_Api_Key="alice"), HOME)
        bob = self.rule.identify(headers(X_Api_Key="bob"), HOME)
        elsewhere = self.rule.identify(headers(X_Api_Key="alice"), IPv4Address("TCP", "198.51.100.1", 1))
        self.assertNotEqual(alice, bob)
        self.assertEqual(alice, elsewhere)
        self.assertFalse(alice.by_address)

    def test_header_name_counts(self) -> None:
        """The same value in Authorization and in X-Api-Key are two callers."""
        one = self.rule.identify(headers(Authorization="token"), HOME)
        other = self.rule.identify(headers(X_Api_Key="token"), HOME)
        self.assertNotEqual(one, other)

    def test_digest_is_of_name_and_value(self) -> None:
        """The identity is SHA-256 of each header's name and value, length-prefixed (an independent recomputation)."""
        got = self.rule.identify(headers(X_Api_Key="alice"), HOME)
        self.assertEqual(got.digest, hashlib.sha256(b"9:x-api-key5:alice").hexdigest())

    def test_strongest_credential(self) -> None:
        """
        A token with a changing cookie beside it is one caller for limits
        (the first identity header sent), and distinct callers for the
        Idempotency-Key scope (all of them).
        """
        one = self.rule.identify(headers(Authorization="Bearer stolen", Cookie="junk=1"), HOME)
        two = self.rule.identify(headers(Authorization="Bearer stolen", Cookie="junk=2"), HOME)
        self.assertEqual(one.strongest, two.strongest)
        self.assertEqual(one.strongest, hashlib.sha256(b"13:authorization13:Bearer stolen").hexdigest())
        self.assertNotEqual(one.digest, two.digest)
        cookie_only = self.rule.identify(headers(Cookie="session=9"), HOME)
        self.assertEqual(cookie_only.strongest, hashlib.sha256(b"6:cookie9:session=9").hexdigest())
        nobody = self.rule.identify(Headers(), HOME)
        self.assertEqual(nobody.strongest, nobody.digest)

    def test_no_headers_is_the_address(self) -> None:
        """Without identity headers the client's host is the caller; its port does not matter."""
        first = self.rule.identify(Headers(), HOME)
        again = self.rule.identify(Headers(), IPv4Address("TCP", "192.0.2.7", 60000))
        other = self.rule.identify(Headers(), IPv6Address("TCP", "2001:db8::1", 50123))
        self.assertTrue(first.by_address)
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)
        self.assertNotEqual(first, self.rule.identify(headers(Cookie="s=1"), HOME))

    def test_other_headers_ignored(self) -> None:
        """A header not named by --identity-header does not change the caller."""
        self.assertEqual(
            self.rule.identify(headers(X_Api_Key="a", User_Agent="curl"), HOME),
            self.rule.identify(headers(X_Api_Key="a"), HOME),
        )

    def test_custom_headers(self) -> None:
        """--identity-header X-Tenant: only that header identifies; Authorization is then ignored."""
        rule = IdentityRule(("X-Tenant",))
        self.assertNotEqual(
            rule.identify(headers(X_Tenant="t1"), HOME), rule.identify(headers(X_Tenant="t2"), HOME)
        )
        self.assertTrue(rule.identify(headers(Authorization="Bearer a"), HOME).by_address)


def parsed(*argv: str, environ: dict[str, str] | None = None) -> ProxyConfig:
    options = Options(environ=environ or {})
    options.parseOptions(list(argv))
    assert options.config is not None
    return options.config


class OptionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With no options, Authorization, Cookie and X-Api-Key identify a caller; 1,000 entries each."""
        config = parsed()
        self.assertEqual(config.identity_headers, ("Authorization", "Cookie", "X-Api-Key"))
        self.assertEqual(config.idempotency_max_per_caller, 1000)

    def test_repeatable_and_environment(self) -> None:
        """--identity-header is repeatable; $SORA2PROXY_IDENTITY_HEADERS is used when none is given."""
        config = parsed("--identity-header", "X-Tenant", "--identity-header", "Authorization")
        self.assertEqual(config.identity_headers, ("X-Tenant", "Authorization"))
        env = {"SORA2PROXY_IDENTITY_HEADERS": "X-Tenant, X-User"}
        self.assertEqual(parsed(environ=env).identity_headers, ("X-Tenant", "X-User"))
        self.assertEqual(parsed("--identity-header", "A", environ=env).identity_headers, ("A",))
        self.assertEqual(parsed("--idempotency-max-per-caller", "5").idempotency_max_per_caller, 5)

    def test_bad_values(self) -> None:
        """A header name with a space or a colon, or a per-caller bound of 0, stops start-up naming the option."""
        for bad in ("X Api", "X:Y", ""):
            with self.assertRaises(ConfigError) as caught:
                ProxyConfig(identity_headers=(bad,))
            self.assertEqual(caught.exception.option, "--identity-header")
        with self.assertRaises(SystemExit) as stopped:
            parsed("--idempotency-max-per-caller", "0")
        self.assertIn("--idempotency-max-per-caller", str(stopped.exception))
