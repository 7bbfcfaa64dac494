"""One configuration for both faces: the ``dhtcart`` command and the HTTP app.

Every setting is declared once, in :data:`OPTIONS`: its default, its
environment variable, its ``dhtcart serve`` option, its range and its help.
:class:`Settings` holds the values; the command line and the app factory both
build one from here, so a variable is parsed (and refused) the same way
wherever it is read:

>>> Settings().port, Settings().data
(8000, './dhtcart-data')
>>> Settings.from_env({"DHTCART_PORT": "9001", "DHTCART_COMPAT": "seed"}).port
9001
>>> Settings.from_env({"DHTCART_WORKERS": "0"})
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: DHTCART_WORKERS: must be between 1 and 512, got 0

Precedence: a command-line option beats its environment variable, which beats
the default. ``dhtcart serve`` hands its settings to the worker processes as
environment variables (:meth:`Settings.to_env`); each worker reads them back
with :meth:`Settings.from_env`.

The location in ``data`` is read by :func:`dhtcart.locations.parse_location`,
so a location is accepted or refused the same way by the command line, the
app and the library:

>>> Settings(data="lmdb:///srv/carts").data
'lmdb:///srv/carts'
>>> Settings.from_env({"DHTCART_DATA": "http://shop/carts"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: DHTCART_DATA: unknown scheme 'http' in 'http://shop/carts'; a store's location is ...

A store kept in a database is created with its shards named:

>>> Settings.from_env({"DHTCART_SHARD_URLS": "a=redis://h:6380/0, b=redis://h:6381/0"}).new_store_shards
{'a': 'redis://h:6380/0', 'b': 'redis://h:6381/0'}

Otherwise this module imports nothing beyond the standard library,
:mod:`dhtcart.errors`, :mod:`dhtcart.checks` and :mod:`dhtcart.locations`
(where the two constants of an etcd location, ``DEFAULT_ETCD_TIMEOUT`` and
``ETCD_PASSWORD_ENV``, are defined with the grammar that uses them; listed
here with the rest): the command line reads it
before it knows whether the server extra is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dhtcart.errors import InvalidInput
from dhtcart.locations import DEFAULT_ETCD_TIMEOUT, ETCD_PASSWORD_ENV, parse_location

__all__ = [
    "COMPAT_PROFILES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_DATA",
    "DEFAULT_ETCD_RETRY",
    "DEFAULT_ETCD_TIMEOUT",
    "DEFAULT_ETCD_WATCH_IDLE",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_READ_LEASE",
    "DEFAULT_REDIRECT_TIMEOUT",
    "DEFAULT_SHARDS",
    "DEFAULT_TAKEOVER_AFTER",
    "ETCD_CA_CERT_ENV",
    "ETCD_CERT_ENV",
    "ETCD_KEY_ENV",
    "ETCD_PASSWORD_ENV",
    "ETCD_USER_ENV",
    "LOG_LEVELS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "OPTIONS",
    "PROMETHEUS_DIR_ENV",
    "REDIS_PASSWORD_ENV",
    "SHARDS_DIR",
    "EtcdSettings",
    "Option",
    "Settings",
]

# -- the library's constants: every layer reads them from here, none repeats them -------------

#: the membership document of a store kept in a directory, and its format (1 was dhtcart 0.1's)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2
#: the directory, inside a store's directory, of its LMDB shards
SHARDS_DIR = "shards"
#: seconds an opener waits for another process that is creating or upgrading the store
DEFAULT_LOCK_TIMEOUT = 10.0
#: keys per hand-over batch of a rebalance
DEFAULT_BATCH_SIZE = 1000
#: seconds an operation follows redirects before it raises KeyUnavailable
DEFAULT_REDIRECT_TIMEOUT = 15.0
#: seconds an operation waits on a hand-over before it tries to finish a stopped rebalancer's batch
DEFAULT_TAKEOVER_AFTER = 0.25
#: seconds a rebalance lease kept in a database (Redis, etcd) outlives a holder that stopped renewing it
DEFAULT_LEASE_TTL = 5.0
#: seconds a primary of a replicated store serves reads after its lease is renewed
DEFAULT_READ_LEASE = 2.0
#: seconds by which two hosts' clocks may differ (a failover waits out a lease plus twice this)
DEFAULT_CLOCK_SKEW = 0.25
#: the variable a Redis shard's or membership's password is read from when its URL carries none
REDIS_PASSWORD_ENV = "DHTCART_REDIS_PASSWORD"
#: the variable that points prometheus_client at the directory its worker processes share
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: where the faces keep their store when no location is given (``--data``, ``DHTCART_DATA``)
DEFAULT_DATA = "./dhtcart-data"

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
COMPAT_PROFILES = ("default", "seed")  #: response shapes: dhtcart's documented API, or the seed code's
DEFAULT_SHARDS = 5  #: shards of a new store when none is asked for

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InvalidInput("text", f"must be one of {', '.join(_TRUE)} or {', '.join(_FALSE[:-1])}, got {text!r}")


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidInput("text", f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise InvalidInput("text", f"must be a number, got {text!r}") from None


def _lower(text: str) -> str:
    return text.strip().lower()


def _text(text: str) -> str:
    return text


def _location(text: str) -> str:
    """``text`` if it is a store's location (see :func:`dhtcart.locations.parse_location`)."""
    parse_location(text)
    return text


def _check_location(value: Any) -> None:
    _location(value)


ShardURLs = tuple[tuple[str, str], ...]


def _shard_urls(text: str) -> ShardURLs:
    """``NAME=URL`` items, separated by commas or white space, as ``((name, url), ...)``."""
    items = text.replace(",", " ").split()
    if not items:
        raise InvalidInput("text", "give each shard as NAME=URL (e.g. a=redis://host:6380/0)")
    pairs = []
    for item in items:
        name, sep, url = item.partition("=")
        if not sep:
            raise InvalidInput("text", f"{item!r} is not NAME=URL (e.g. a=redis://host:6380/0)")
        pairs.append((name, url))
    _check_shard_urls(tuple(pairs))
    return tuple(pairs)


def _check_shard_urls(value: Any) -> None:
    from dhtcart.checks import check_shard_name

    seen: set[str] = set()
    for name, url in value:
        try:
            check_shard_name(name)
        except InvalidInput as exc:
            raise InvalidInput("text", exc.message) from None
        if name in seen:
            raise InvalidInput("text", f"shard {name!r} is named twice")
        seen.add(name)
        if "://" not in url:
            raise InvalidInput("text", f"shard {name!r}: {url!r} is not a backend URL (e.g. redis://host:6380/0)")


@dataclass(frozen=True)
class Option:
    """One setting: where it comes from, what it may be, and what it means.

    ``flag`` is the ``dhtcart serve`` option (``--no-...`` for a setting that
    is on by default and switched off by the flag); ``parse`` turns the text
    of a variable or option into the value (or raises
    :class:`~dhtcart.errors.InvalidInput`); ``low``/``high`` (numbers) or
    ``choices`` (text) bound it; ``validate`` checks what else a value must
    be (a location, a list of shards), raising :class:`InvalidInput`. A
    ``repeat`` option may be given several times on the command line, each
    adding to the value (a tuple); its variable lists the items at once.
    """

    name: str
    env: str
    flag: str
    help: str
    parse: Callable[[str], Any] = _text
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    validate: Callable[[Any], None] | None = None
    repeat: bool = False

    @property
    def is_switch(self) -> bool:
        """A boolean setting: its flag takes no value."""
        return self.parse is _bool

    def check(self, value: Any, label: str) -> Any:
        """``value`` if it is allowed, else :class:`InvalidInput` naming ``label``."""
        if self.choices and value not in self.choices:
            raise InvalidInput(label, f"must be one of {', '.join(self.choices)}, got {value!r}")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            low, high = (int(b) if float(b).is_integer() else b for b in (self.low, self.high))
            raise InvalidInput(label, f"must be between {low} and {high}, got {value}")
        if self.validate is not None:
            try:
                self.validate(value)
            except InvalidInput as exc:
                raise InvalidInput(label, exc.message) from None
        return value

    def read(self, text: str, label: str) -> Any:
        """Parse and check the text of a variable or option."""
        try:
            value = self.parse(text)
        except InvalidInput as exc:
            raise InvalidInput(label, exc.message) from None
        return self.check(value, label)


#: every setting, in the order ``dhtcart serve --help`` lists them
OPTIONS: tuple[Option, ...] = (
    Option("host", "DHTCART_HOST", "--host", "interface to listen on (0.0.0.0 for all)"),
    Option("port", "DHTCART_PORT", "--port", "TCP port", _int, 0, 65535),
    Option(
        "data",
        "DHTCART_DATA",
        "--data",
        "where the store is: a directory, lmdb://PATH, redis://host:port/db (its membership's database)"
        " or, for serve, memory://",
        _location,
        metavar="LOCATION",
        validate=_check_location,
    ),
    Option(
        "shards",
        "DHTCART_SHARDS",
        "--shards",
        f"shards of a new store (ignored when the store exists; default {DEFAULT_SHARDS})",
        _int,
        1,
        4096,
        metavar="N",
    ),
    Option(
        "shard_urls",
        "DHTCART_SHARD_URLS",
        "--shard",
        "a shard of a new store, as NAME=URL (repeat it for each; the variable lists them, comma-separated);"
        " a store kept in a database needs them; instead of --shards",
        _shard_urls,
        metavar="NAME=URL",
        validate=_check_shard_urls,
        repeat=True,
    ),
    Option(
        "replicas",
        "DHTCART_REPLICAS",
        "--replicas",
        "copies of every key in a new store, on distinct shards (ignored when the store exists:"
        " change it with `dhtcart set-replicas`; default 1)",
        _int,
        1,
        7,
        metavar="N",
    ),
    Option("workers", "DHTCART_WORKERS", "--workers", "worker processes sharing the store", _int, 1, 512, metavar="N"),
    Option(
        "log_level",
        "DHTCART_LOG_LEVEL",
        "--log-level",
        "'warning' hides the per-request lines",
        _lower,
        choices=LOG_LEVELS,
    ),
    Option("access_log", "DHTCART_ACCESS_LOG", "--no-access-log", "do not log one line per request", _bool),
    Option(
        "max_body_bytes",
        "DHTCART_MAX_BODY_BYTES",
        "--max-body-bytes",
        "largest request body accepted, 413 beyond",
        _int,
        0,
        1 << 30,
        metavar="N",
    ),
    Option(
        "thread_pool",
        "DHTCART_THREAD_POOL",
        "--thread-pool",
        "run every store call in the thread pool, even on fast local shards",
        _bool,
    ),
    Option(
        "graceful_timeout",
        "DHTCART_GRACEFUL_TIMEOUT",
        "--graceful-timeout",
        "on shutdown, wait this long for in-flight requests",
        _float,
        0,
        3600,
        metavar="SECONDS",
    ),
    Option(
        "compat",
        "DHTCART_COMPAT",
        "--compat",
        "response shapes: 'default' (the documented API) or 'seed' (the seed code's, for its clients)",
        _lower,
        choices=COMPAT_PROFILES,
    ),
    Option(
        "request_timeout",
        "DHTCART_REQUEST_TIMEOUT",
        "--request-timeout",
        "a client must send a whole request (headers and body) within this long of starting it "
        "or of connecting; else 408 and the connection is closed",
        _float,
        0.1,
        3600,
        metavar="SECONDS",
    ),
    Option(
        "keep_alive_timeout",
        "DHTCART_KEEP_ALIVE_TIMEOUT",
        "--keep-alive-timeout",
        "close a keep-alive connection idle this long after a response",
        _int,
        1,
        3600,
        metavar="SECONDS",
    ),
    Option(
        "max_connections",
        "DHTCART_MAX_CONNECTIONS",
        "--max-connections",
        "open connections per worker; beyond it a request gets 503 and the connection is closed",
        _int,
        1,
        1_000_000,
        metavar="N",
    ),
    Option("backlog", "DHTCART_BACKLOG", "--backlog", "connections the kernel queues before accept", _int, 1, 65535),
    Option("metrics", "DHTCART_METRICS", "--no-metrics", "do not serve /metrics nor count requests", _bool),
)

_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The configuration of the faces; see :data:`OPTIONS` for each field's meaning.

    Constructing one checks every value (:class:`~dhtcart.errors.InvalidInput`
    naming the field). ``shards`` is ``None`` unless asked for: a new store
    then gets :data:`DEFAULT_SHARDS`, and an existing one keeps its own.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    data: str = DEFAULT_DATA
    shards: int | None = None
    shard_urls: ShardURLs = ()
    replicas: int = 1
    workers: int = 1
    log_level: str = "info"
    access_log: bool = True
    max_body_bytes: int = 64 * 1024
    thread_pool: bool = False
    graceful_timeout: float = 10.0
    compat: str = "default"
    request_timeout: float = 10.0
    keep_alive_timeout: int = 5
    max_connections: int = 1000
    backlog: int = 2048
    metrics: bool = True

    def __post_init__(self) -> None:
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value is None and option.name == "shards":
                continue
            _check_type(option, value)
            option.check(value, option.name)
        if self.shards is not None and self.shard_urls:
            raise InvalidInput(
                "shards", "give either a number of shards or each shard's NAME=URL (shard_urls), not both"
            )

    @property
    def new_store_shards(self) -> int | dict[str, str]:
        """The shards a store created with these settings gets: a number of LMDB shards in its
        directory, or each shard's URL by name (what :meth:`DHTServerStore.open
        <dhtcart.store.DHTServerStore.open>` takes as ``shards``)."""
        if self.shard_urls:
            return dict(self.shard_urls)
        return DEFAULT_SHARDS if self.shards is None else self.shards

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (checked like any other value)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``DHTCART_*`` variables (``os.environ`` by default); unset or empty ones keep the default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = env.get(option.env)
            if raw:
                values[option.name] = option.read(raw, option.env)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``DHTCART_*`` variables that :meth:`from_env` reads back as these settings."""
        out: dict[str, str] = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value is None or value == ():
                continue
            if isinstance(value, bool):
                out[option.env] = "1" if value else "0"
            elif isinstance(value, tuple):
                out[option.env] = ",".join(f"{name}={url}" for name, url in value)
            else:
                out[option.env] = str(value)
        return out

    @classmethod
    def from_namespace(cls, args: Any) -> Settings:
        """Settings from parsed command-line arguments (see :func:`add_options`); flags beat the environment."""
        values: dict[str, Any] = {}
        for option in OPTIONS:
            if not hasattr(args, option.name):
                continue
            value = getattr(args, option.name)
            if isinstance(value, _BadEnv):
                raise InvalidInput(value.env, value.message)
            if value is None:
                continue
            values[option.name] = option.check(value, option_label(option))
        if values.get("shards") is not None and values.get("shard_urls"):
            raise InvalidInput(
                f"{option_label(_BY_NAME['shards'])} and {option_label(_BY_NAME['shard_urls'])}",
                "give either a number of LMDB shards or each shard's NAME=URL, not both",
            )
        return cls(**values)


def option_label(option: Option) -> str:
    """How messages name an option: its flag and its variable (``--port (or DHTCART_PORT)``)."""
    return f"{option.flag.replace('--no-', '--')} (or {option.env})"


def _check_type(option: Option, value: Any) -> None:
    default = _DEFAULTS.get(option.name)
    expected: type | tuple[type, ...]
    if isinstance(default, bool):
        expected = bool
    elif isinstance(default, tuple):
        expected = tuple
    elif isinstance(default, float):
        expected = (int, float)
    elif option.parse is _int:
        expected = int
    else:
        expected = str
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise InvalidInput(option.name, f"must be {getattr(expected, '__name__', 'a number')}, not {value!r}")


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}


class _BadEnv:
    """An environment variable that did not parse: reported when the settings are built."""

    def __init__(self, env: str, message: str) -> None:
        self.env = env
        self.message = message

    def __repr__(self) -> str:
        return f"<invalid ${self.env}>"


def cli_default(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value an option takes when it is not given: its variable's, else the default."""
    option = _BY_NAME[name]
    env = os.environ if environ is None else environ
    raw = env.get(option.env)
    if not raw:
        return _DEFAULTS[name]
    try:
        return option.parse(raw)
    except InvalidInput as exc:
        return _BadEnv(option.env, exc.message)


def add_options(parser: Any, *names: str) -> None:
    """Add the options ``names`` to an :class:`argparse.ArgumentParser`, defaults from the environment."""
    for name in names:
        option = _BY_NAME[name]
        default = cli_default(name)
        shown = "" if _DEFAULTS[name] in (None, ()) else f"; default {_DEFAULTS[name]}"
        help_text = f"{option.help} (env {option.env}{shown})"
        if option.repeat:
            parser.add_argument(
                option.flag,
                dest=name,
                action=_repeat_action(),
                type=_argparse_type(option),
                default=default,
                metavar=option.metavar,
                help=help_text,
            )
            continue
        if option.is_switch:
            # --thread-pool turns a default-off setting on; --no-access-log turns a default-on one off
            parser.add_argument(
                option.flag,
                dest=name,
                action="store_const",
                const=not option.flag.startswith("--no-"),
                default=default,
                help=help_text,
            )
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": help_text}
        if option.choices:
            kwargs["choices"] = option.choices
            kwargs["type"] = option.parse
        elif option.parse is not _text:
            kwargs["type"] = _argparse_type(option)
        if option.metavar:
            kwargs["metavar"] = option.metavar
        parser.add_argument(option.flag, **kwargs)


@functools.cache
def _repeat_action() -> type:
    """The argparse action of a ``repeat`` option (made when a parser is built: the app never needs argparse)."""
    import argparse

    class Repeat(argparse.Action):
        """Every use of a repeatable option adds its items; the first use replaces the default
        (the environment's), so the command line beats the variable."""

        def __call__(
            self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
        ) -> None:
            current = getattr(namespace, self.dest, None)
            if current is self.default or not isinstance(current, tuple):
                current = ()
            setattr(namespace, self.dest, (*current, *values))

    return Repeat


def _argparse_type(option: Option) -> Callable[[str], Any]:
    import argparse

    def convert(text: str) -> Any:
        try:
            return option.parse(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = option.parse.__name__.strip("_")  # argparse names it in "invalid int value"
    return convert


# -- a membership kept in etcd: credentials and TLS files ---------------------------------------

#: seconds a write to etcd (publishing, taking the lease) keeps retrying through a leader election:
#: the election itself (1-2 s with both cores busy), plus a write sent during it, which the member
#: may hold unanswered until the URL's ``timeout`` (2 s) on each member tried, plus the retry
#: (etcd's own request timeout is 5 s + 2 election timeouts, 7 s by default)
DEFAULT_ETCD_RETRY = 10.0
#: seconds a watch stream may stay silent before it is opened again (a hung member is noticed then)
DEFAULT_ETCD_WATCH_IDLE = 5.0
#: the variables an etcd-kept membership reads its user, password and TLS files from
ETCD_USER_ENV = "DHTCART_ETCD_USER"
ETCD_CA_CERT_ENV = "DHTCART_ETCD_CA_CERT"
ETCD_CERT_ENV = "DHTCART_ETCD_CERT"
ETCD_KEY_ENV = "DHTCART_ETCD_KEY"


@dataclass(frozen=True)
class EtcdSettings:
    """How a client authenticates to the etcd cluster that keeps a store's membership.

    Read from the environment (:meth:`from_env`), never from the location's URL
    (which may name a user, but no password), so a password never lands in a
    shell history, a process list, a membership document or an error message:

    ``DHTCART_ETCD_USER``, ``DHTCART_ETCD_PASSWORD``
        etcd's role-based access (``etcdctl auth enable``); a user in the URL
        (``etcd://dhtcart@host:2379/carts``) wins over the variable;
    ``DHTCART_ETCD_CA_CERT``
        the CA bundle that signed the members' certificates (``etcds://``;
        default: the bundle of ``certifi``, as ``requests`` has it; the
        ``REQUESTS_CA_BUNDLE`` variable is ignored);
    ``DHTCART_ETCD_CERT``, ``DHTCART_ETCD_KEY``
        a client certificate and its key, for members started with
        ``--client-cert-auth``.

    >>> EtcdSettings.from_env({"DHTCART_ETCD_USER": "dhtcart", "DHTCART_ETCD_PASSWORD": "s3cret"})
    EtcdSettings(user='dhtcart', password='***', ca_cert=None, cert=None, key=None)
    >>> EtcdSettings.from_env({"DHTCART_ETCD_CERT": "/etc/dhtcart/client.pem"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dhtcart.errors.InvalidInput: DHTCART_ETCD_KEY: a client certificate needs its key: set DHTCART_ETCD_CERT and ...
    """

    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            missing = ETCD_KEY_ENV if self.key is None else ETCD_CERT_ENV
            raise InvalidInput(
                missing, f"a client certificate needs its key: set {ETCD_CERT_ENV} and {ETCD_KEY_ENV} together"
            )
        if self.password is not None and not self.user:
            raise InvalidInput(ETCD_USER_ENV, f"a password ({ETCD_PASSWORD_ENV}) needs a user name")

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        return (
            f"EtcdSettings(user={self.user!r}, password={password!r}, ca_cert={self.ca_cert!r},"
            f" cert={self.cert!r}, key={self.key!r})"
        )

    def with_user(self, user: str | None) -> EtcdSettings:
        """These settings with ``user`` (a URL's user) instead of the variable's, when given."""
        return self if not user else dataclasses.replace(self, user=user)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EtcdSettings:
        """The settings the ``DHTCART_ETCD_*`` variables give (``os.environ`` by default); unset or empty ones are
        ``None``."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        names = (ETCD_USER_ENV, ETCD_PASSWORD_ENV, ETCD_CA_CERT_ENV, ETCD_CERT_ENV, ETCD_KEY_ENV)
        return cls(*(get(name) for name in names))
