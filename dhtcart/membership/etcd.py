"""A membership kept in etcd: clients on any host open the store from one URL, and no host is a single point of failure.

``etcd://host:port[,host:port...]/prefix`` (``etcds://`` for TLS) names the
members of an etcd cluster (3.4 or later) and a key prefix. Under it live
three keys:

``<prefix>/membership``
    the :class:`~dhtcart.membership.base.MembershipDoc`, as JSON;
``<prefix>/lease``
    the rebalance lease: the holder's name, attached to an etcd lease that the
    holder keeps alive; etcd deletes it when the holder stops renewing it;
``<prefix>/progress``
    the running migration's keys moved and planned (advice, for status).

**The lease.** :meth:`EtcdMembership.try_lease` grants an etcd lease, then
creates the lease key attached to it in a transaction that requires the key to
be absent. The revision at which the key was created is the **fencing
token**: etcd revisions grow with every write to the cluster, so each
acquisition, by any holder, gets a larger token than every one before it. A
thread renews the lease every third of ``lease_ttl``; the holder counts it
lost ``lease_ttl`` seconds after the last renewal it *sent* that etcd
confirmed, never later than etcd itself (whose time to live is at least
``lease_ttl`` from when it received that renewal) lets a successor in.

**Publishing** is a transaction comparing the document's ``mod_revision``
with the revision of the epoch it follows, and the lease key's
``create_revision`` with the holder's token: a document is replaced only on
top of the one the holder read, and only while its lease stands.

**The watch.** :meth:`EtcdMembership.watch` follows the document's key from
the revision a handle read, on one member at a time, and hands each newer
document to the store, which switches to it at once. A watch that breaks
(its member died, lost its leader, or stayed silent for the idle time) is
opened again on the next member from the last revision it delivered, so no
epoch is skipped; if etcd compacted that revision away, the document is read
afresh. A pushed document is advice: a late one costs a redirect.

Every request carries etcd's ``hasleader`` requirement, so a member cut off
from its quorum answers at once that it has no leader, and the next endpoint
is tried. The client library is ``etcd3gw`` (the ``[etcd]`` extra): it speaks
etcd's gRPC gateway over HTTP; why it and not another is in
``docs/membership.md``. Its exceptions (and ``requests``') are mapped in
:meth:`EtcdMembership._request` and the watch loop: none leaves this module.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dhtcart.errors import InvalidInput, LeaseLost, ShardUnavailable
from dhtcart.locations import ETCD_FORMS, EtcdURL, parse_etcd_url
from dhtcart.membership.base import Lease, Membership, MembershipDoc
from dhtcart.settings import (
    DEFAULT_ETCD_RETRY,
    DEFAULT_ETCD_WATCH_IDLE,
    DEFAULT_LEASE_TTL,
    EtcdSettings,
)

if TYPE_CHECKING:
    import requests
    from etcd3gw.client import Etcd3Client

__all__ = ["ETCD_FORMS", "EtcdMembership", "EtcdURL", "parse_etcd_url"]

_T = TypeVar("_T")

#: the gRPC metadata (through the gateway's header) that makes a member without a leader refuse at once
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
#: gRPC codes of refusals that say nothing about the request (try another member, or later)
_TRANSIENT_CODES = {1, 4, 8, 10, 13, 14}  # canceled, deadline, exhausted, aborted, internal, unavailable
_UNAUTHENTICATED = 16


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _compare(key: str, target: str, revision: int) -> dict[str, Any]:
    """A transaction's comparison: ``key``'s ``CREATE`` or ``MOD`` revision equals ``revision`` (0: absent)."""
    return {"key": _b64(key), "result": "EQUAL", "target": target, f"{target.lower()}_revision": revision}


def _put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        put["lease"] = lease
    return {"request_put": put}


def _get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


class _Refused(Exception):
    """etcd answered, and refused for a reason that another member would share (internal)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _grpc_error(text: str | None) -> tuple[int, str]:
    """The gRPC code and message of an error body of the gateway (``-1`` when it is not one)."""
    try:
        body = json.loads(text or "")
    except ValueError:
        body = None
    if isinstance(body, dict):  # unary: {"error", "message", "code"}; streams: {"error": {"grpc_code", ...}}
        inner = body.get("error")
        error = inner if isinstance(inner, dict) else body
        code = error.get("code", error.get("grpc_code"))
        message = str(error.get("message") or error.get("error") or text)
        return (code if isinstance(code, int) else -1), message
    return -1, (text or "").strip()[:200]


class _EtcdLease(Lease):
    """An etcd lease kept alive by a thread of its holder; ``token`` is the lease key's create revision."""

    def __init__(self, owner: EtcdMembership, lease_id: int, token: int, holder: str, since: float) -> None:
        self._owner = owner
        self.lease_id = lease_id
        self.token = token
        self.holder = holder
        self._ttl = owner.lease_ttl
        self._renewed = since  # when the last renewal etcd confirmed was sent
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"dhtcart-etcd-lease-{token}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        owner = self._owner
        while not self._stop.wait(self._ttl / 3):
            sent = time.monotonic()
            try:
                left = owner._keepalive(self.lease_id, budget=self._ttl / 3)
            except ShardUnavailable:
                left = None
            if self._stop.is_set():
                return
            if left is not None and left > 0:
                self._renewed = sent
            elif left is not None:
                self._lost = "etcd let it expire (its holder was too slow to renew it)"
                return
            elif time.monotonic() - self._renewed > self._ttl:
                self._lost = f"it could not be renewed for {self._ttl:g} s (etcd unreachable, or without quorum)"
                return

    def check(self) -> None:
        if self._lost is not None:
            raise LeaseLost(f"lease {self.token} lost: {self._lost}")
        if self._stop.is_set():
            raise LeaseLost("the lease was released")
        if time.monotonic() - self._renewed > self._ttl:
            raise LeaseLost(f"lease {self.token} lost: not renewed for {self._ttl:g} s")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self._ttl + self._owner._url.timeout)
        with self._owner._lock:
            if self._owner._held is self:
                self._owner._held = None
        self._owner._revoke(self.lease_id)  # deletes the lease key: the next holder needs not wait


class EtcdMembership(Membership):
    """The document in an etcd cluster: ``etcd://host:port[,host:port...]/prefix`` (see the module doc).

    ``lease_ttl`` is how long a lease outlives a holder that stopped renewing
    it (etcd rounds it up to whole seconds, at least its own minimum, about
    1.5 election timeouts); ``settings`` the credentials and TLS files
    (default: :meth:`~dhtcart.settings.EtcdSettings.from_env`). When no member
    answers with a leader, reading the document falls back to any member's
    own copy (possibly old, which costs a redirect, never a wrong answer) and
    everything else raises :class:`~dhtcart.errors.ShardUnavailable` naming
    the membership.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        settings: EtcdSettings | None = None,
        retry_for: float = DEFAULT_ETCD_RETRY,
        watch_idle: float = DEFAULT_ETCD_WATCH_IDLE,
    ) -> None:
        self._url = parse_etcd_url(url)
        if not lease_ttl > 0 or math.isinf(lease_ttl):
            raise InvalidInput("lease_ttl", f"must be a positive number of seconds, got {lease_ttl!r}")
        try:
            from etcd3gw.client import Etcd3Client
        except ImportError:
            raise InvalidInput(
                "location", f"{self._url.display} needs the etcd client: pip install 'dhtcart[etcd]'"
            ) from None
        self._settings = (settings or EtcdSettings.from_env()).with_user(self._url.user)
        for name in ("ca_cert", "cert", "key"):
            path = getattr(self._settings, name)
            if path is not None and not os.path.isfile(path):
                raise InvalidInput(name, f"{path!r} is not a file (DHTCART_ETCD_{name.upper()})")
        self.location = self._url.display
        self.lease_ttl = float(lease_ttl)
        self._retry_for = float(retry_for)
        self._watch_idle = float(watch_idle)
        prefix = self._url.prefix
        self._doc_key = f"{prefix}/membership"
        self._lease_key = f"{prefix}/lease"
        self._progress_key = f"{prefix}/progress"
        protocol = "https" if self._url.tls else "http"
        self._clients: list[Etcd3Client] = []
        for host, port in self._url.endpoints:
            client = Etcd3Client(host=host, port=port, protocol=protocol, timeout=self._url.timeout, api_path="/v3/")
            self._configure(client.session)
            self._clients.append(client)
        self._current = 0  # the endpoint that answered last
        self._lock = threading.Lock()
        self._token: str | None = None  # the auth token, when a user is set
        self._known: tuple[int, int] | None = None  # (epoch, mod_revision) of the newest document seen
        self._held: _EtcdLease | None = None  # the lease this membership holds, if any
        self._closed = False
        self._callbacks: list[Callable[[MembershipDoc], None]] = []
        self._watch_thread: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._watch_live = False
        self._watch_settled = threading.Event()  # the first stream was created, or failed
        self._watch_response: requests.Response | None = None
        self._watch_session: requests.Session | None = None

    # -- talking to etcd ---------------------------------------------------------------

    def _configure(self, session: requests.Session) -> None:
        # the endpoints and files are the location's and the settings': no proxy nor CA bundle from the
        # environment (REQUESTS_CA_BUNDLE would silently replace DHTCART_ETCD_CA_CERT)
        session.trust_env = False
        session.headers.update(_REQUIRE_LEADER)
        settings = self._settings
        if self._url.tls and settings.ca_cert:
            session.verify = settings.ca_cert
        if settings.cert and settings.key:
            session.cert = (settings.cert, settings.key)

    def _unavailable(self, why: str, *, wrote: bool = False) -> ShardUnavailable:
        if wrote:
            why += "; the write may or may not have been applied"
        return ShardUnavailable("membership", self.location, why)

    def _authenticate(self, client: Etcd3Client) -> None:
        """Get an auth token for the configured user and give it to every session."""
        settings = self._settings
        reply = client.post(
            client.get_url("/auth/authenticate"), json={"name": settings.user, "password": settings.password or ""}
        )
        token = str(reply["token"])
        with self._lock:
            self._token = token
            for other in self._clients:
                other.session.headers["Authorization"] = token
            if self._watch_session is not None:
                self._watch_session.headers["Authorization"] = token

    def _attempt(self, client: Etcd3Client, fn: Callable[[Etcd3Client], _T]) -> _T:
        """One call on one member: the library's and ``requests``' errors become ``_Refused`` (a definite
        refusal) or ``OSError`` (try another member)."""
        from etcd3gw import exceptions as ex
        from requests import RequestException

        for attempt in range(2):
            try:
                if self._settings.user and self._token is None:
                    self._authenticate(client)
                return fn(client)
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError, ex.InternalServerError) as exc:
                code, message = _grpc_error(exc.detail_text)
                if isinstance(exc, ex.ConnectionTimeoutError):
                    message = f"no answer within {self._url.timeout:g} s"
                raise OSError(message) from None
            except ex.Etcd3Exception as exc:
                code, message = _grpc_error(exc.detail_text)
                if code == _UNAUTHENTICATED and attempt == 0 and self._settings.user:
                    self._token = None  # expired: authenticate again, once
                    continue
                if code in _TRANSIENT_CODES:
                    raise OSError(message) from None
                raise _Refused(code, message) from None
            except RequestException as exc:
                raise OSError(str(exc)) from None
            except (ValueError, KeyError, TypeError) as exc:  # not an etcd answer (another server on the port?)
                raise OSError(f"not an etcd answer: {exc}") from None
        raise OSError("authentication did not hold")  # pragma: no cover - the loop returns or raises

    def _request(self, fn: Callable[[Etcd3Client], _T], *, what: str, budget: float = 0.0, wrote: bool = False) -> _T:
        """``fn`` on the endpoint that answered last, then on the others in turn, retried for ``budget``
        seconds (at least one pass over the endpoints). A definite refusal (a wrong password, a
        permission) raises :class:`_Refused`; no answer, :class:`ShardUnavailable` naming the membership."""
        if self._closed:
            raise self._unavailable(f"{what}: the membership was closed")
        deadline = time.monotonic() + budget
        delay = 0.02
        errors: dict[str, str] = {}
        n = len(self._clients)
        while True:
            start = self._current
            for i in range(n):
                index = (start + i) % n
                client = self._clients[index]
                try:
                    result = self._attempt(client, fn)
                except OSError as exc:
                    errors[f"{client.host}:{client.port}"] = str(exc) or type(exc).__name__
                    continue
                self._current = index
                return result
            if time.monotonic() + delay > deadline or self._closed:
                detail = "; ".join(f"{where}: {why}" for where, why in errors.items())
                raise self._unavailable(f"{what}: no etcd member answered with a leader ({detail})", wrote=wrote)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _refused(self, what: str, exc: _Refused) -> ShardUnavailable:
        return self._unavailable(f"{what}: etcd refused: {exc.message}")

    def _range(self, client: Etcd3Client, key: str, *, serializable: bool = False) -> tuple[dict[str, Any] | None, int]:
        payload: dict[str, Any] = {"key": _b64(key)}
        if serializable:
            payload["serializable"] = True
        reply = client.post(client.get_url("/kv/range"), json=payload)
        kvs = reply.get("kvs") or []
        return (kvs[0] if kvs else None), int(reply["header"]["revision"])

    def _txn(self, what: str, txn: dict[str, Any], *, budget: float = 0.0) -> dict[str, Any]:
        try:
            return dict(self._request(lambda c: c.transaction(txn), what=what, budget=budget, wrote=True))
        except _Refused as exc:
            raise self._refused(what, exc) from None

    def _note(self, doc: MembershipDoc, revision: int) -> None:
        """Remember the newest document seen and the revision it was written at."""
        with self._lock:
            if self._known is None or revision > self._known[1]:
                self._known = (doc.epoch, revision)

    def _decode(self, kv: dict[str, Any]) -> MembershipDoc:
        try:
            return MembershipDoc.from_dict(json.loads(_unb64(kv.get("value", ""))), self.location)
        except InvalidInput:
            raise  # a format this version does not read: said as for every kind
        except (ValueError, KeyError, TypeError) as exc:
            raise self._unavailable(f"the membership document is not readable: {exc}") from None

    # -- the document --------------------------------------------------------------------

    def _read(self, key: str, what: str, *, absent_ok: bool) -> dict[str, Any] | None:
        """``key``'s entry, linearizable; when no member has a leader, a member's own copy.

        A copy (a serializable read) may be old: handles ignore a document older
        than theirs, and a shard redirects what an old one routes wrong; the
        lease holder and progress are shown, never acted on. ``absent_ok``: a
        member without the key is an answer (else the error is raised again).
        """
        try:
            kv, _ = self._request(lambda c: self._range(c, key), what=what)
        except _Refused as exc:
            raise self._refused(what, exc) from None
        except ShardUnavailable as exc:
            found, kv = self._stale_read(key)
            if not found or (kv is None and not absent_ok):
                raise exc from None
        return kv

    def _stale_read(self, key: str) -> tuple[bool, dict[str, Any] | None]:
        """``(answered, entry)`` of the first member that answers a serializable read of ``key``."""
        from etcd3gw.client import Etcd3Client

        protocol = "https" if self._url.tls else "http"
        for host, port in self._url.endpoints:
            client = Etcd3Client(host=host, port=port, protocol=protocol, timeout=self._url.timeout, api_path="/v3/")
            self._configure(client.session)
            client.session.headers.pop("Grpc-Metadata-hasleader", None)
            if self._token is not None:
                client.session.headers["Authorization"] = self._token
            try:
                kv, _ = self._attempt(client, lambda c: self._range(c, key, serializable=True))
            except (OSError, _Refused):
                continue
            finally:
                client.session.close()
            return True, kv
        return False, None

    def load(self) -> MembershipDoc | None:
        kv = self._read(self._doc_key, "reading the membership", absent_ok=False)
        if kv is None:
            return None
        doc = self._decode(kv)
        self._note(doc, int(kv["mod_revision"]))
        return doc

    def create(self, doc: MembershipDoc) -> MembershipDoc:
        text = doc.to_json()
        reply = self._txn(
            "creating the membership",
            {
                "compare": [_compare(self._doc_key, "CREATE", 0)],
                "success": [_put(self._doc_key, text)],
                "failure": [_get(self._doc_key)],
            },
            budget=self._retry_for,
        )
        if reply.get("succeeded"):
            self._note(doc, int(reply["header"]["revision"]))
            return doc
        kv = reply["responses"][0]["response_range"]["kvs"][0]
        existing = self._decode(kv)
        self._note(existing, int(kv["mod_revision"]))
        return existing

    def _revision_of(self, epoch: int) -> int:
        """The revision the document of ``epoch`` was written at, if it is the current one."""
        with self._lock:
            known = self._known
        if known is not None and known[0] == epoch:
            return known[1]
        current = self.load()
        with self._lock:
            known = self._known
        if current is None or known is None or current.epoch != epoch or known[0] != epoch:
            raise LeaseLost(f"{self.location}: epoch {epoch + 1} does not follow {current and current.epoch}")
        return known[1]

    def publish(self, doc: MembershipDoc, lease: Lease) -> None:
        lease.check()
        if not isinstance(lease, _EtcdLease) or lease._owner._url.prefix != self._url.prefix:
            raise LeaseLost(f"{self.location}: that lease is not this membership's")
        previous = self._revision_of(doc.epoch - 1)
        text = doc.to_json()
        txn = {
            "compare": [_compare(self._doc_key, "MOD", previous), _compare(self._lease_key, "CREATE", lease.token)],
            "success": [_put(self._doc_key, text)],
            "failure": [_get(self._doc_key), _get(self._lease_key)],
        }
        what = f"publishing epoch {doc.epoch}"
        deadline = time.monotonic() + self._retry_for
        while True:
            lease.check()  # never write after the lease may have passed to another
            try:
                reply = self._txn(what, txn)
                break
            except ShardUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if reply.get("succeeded"):
            self._note(doc, int(reply["header"]["revision"]))
            return
        current = reply["responses"][0]["response_range"].get("kvs") or []
        holder = reply["responses"][1]["response_range"].get("kvs") or []
        if not holder or int(holder[0]["create_revision"]) != lease.token:
            raise LeaseLost(f"{self.location}: cannot publish epoch {doc.epoch}: lease {lease.token} expired in etcd")
        if current and _unb64(current[0].get("value", "")).decode() == text:
            self._note(doc, int(current[0]["mod_revision"]))  # an earlier attempt whose reply was lost
            return
        found = self._decode(current[0]).epoch if current else None
        raise LeaseLost(f"{self.location}: cannot publish epoch {doc.epoch}: the membership is at epoch {found}")

    # -- the lease -----------------------------------------------------------------------

    def try_lease(self, holder: str) -> Lease | None:
        """Take the rebalance lease, or ``None`` when another holds it. Both steps (granting an
        etcd lease, then creating the lease key with it) share one retry budget, and the lease's
        time runs from the sending of the grant that etcd answered (the first attempts of an
        election may go unanswered: a lease counted from them would be lost on arrival)."""
        ttl = max(1, math.ceil(self.lease_ttl))
        what = "taking the rebalance lease"
        deadline = time.monotonic() + self._retry_for
        sent = [0.0]

        def grant_one(c: Etcd3Client) -> Any:
            sent[0] = time.monotonic()  # the last attempt's: the one that answered, when it returns
            return c.post(c.get_url("/lease/grant"), json={"TTL": ttl, "ID": 0})

        for _ in range(2):  # a grant that expired before its key was made (a long pause) is tried once more
            try:
                grant = self._request(grant_one, what=what, budget=max(0.0, deadline - time.monotonic()), wrote=True)
            except _Refused as exc:
                raise self._refused(what, exc) from None
            since = sent[0]
            lease_id = int(grant["ID"])
            txn = {
                "compare": [_compare(self._lease_key, "CREATE", 0)],
                "success": [_put(self._lease_key, holder, lease_id)],
                "failure": [_get(self._lease_key)],
            }
            try:
                reply = self._request(
                    lambda c, txn=txn: c.transaction(txn),  # type: ignore[misc]
                    what=what,
                    budget=max(0.0, deadline - time.monotonic()),
                    wrote=True,
                )
            except _Refused as exc:
                self._revoke(lease_id)
                if exc.code == 5:  # NotFound: the granted lease expired before its key was made
                    continue
                raise self._refused(what, exc) from None
            except ShardUnavailable:
                self._revoke(lease_id)
                raise
            if reply.get("succeeded"):
                token = int(reply["header"]["revision"])
            else:
                kvs = reply["responses"][0]["response_range"].get("kvs") or []
                if not (kvs and int(kvs[0].get("lease", 0)) == lease_id):
                    self._revoke(lease_id)
                    return None
                token = int(kvs[0]["create_revision"])  # our own earlier attempt, whose reply was lost
            lease = _EtcdLease(self, lease_id, token, holder, since)
            with self._lock:
                self._held = lease
            return lease
        return None

    def _keepalive(self, lease_id: int, budget: float) -> int:
        """Renew lease ``lease_id``; return the time to live etcd gives it now (``<= 0``: expired)."""

        def renew(c: Etcd3Client) -> int:
            reply = c.post(c.get_url("/lease/keepalive"), json={"ID": lease_id})
            return int(reply.get("result", {}).get("TTL", -1))

        try:
            return self._request(renew, what="renewing the lease", budget=budget)
        except _Refused as exc:
            if exc.code == 5:
                return -1
            raise self._refused("renewing the lease", exc) from None

    def _revoke(self, lease_id: int) -> None:
        """Revoke a lease (its key goes with it); best effort: unrevoked, it expires by itself."""
        with contextlib.suppress(ShardUnavailable, _Refused):
            self._request(
                lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease_id}),
                what="releasing the lease",
                wrote=True,
            )

    def lease_holder(self) -> str | None:
        kv = self._read(self._lease_key, "reading the lease", absent_ok=True)
        return None if kv is None else _unb64(kv.get("value", "")).decode(errors="replace")

    # -- progress ------------------------------------------------------------------------

    def report_progress(self, epoch: int, moved: int, planned: int) -> None:
        put = _put(self._progress_key, json.dumps([epoch, moved, planned]))
        with self._lock:
            held = self._held
        # only while our lease stands: a holder that lost it reports nothing
        compare = [] if held is None else [_compare(self._lease_key, "CREATE", held.token)]
        with contextlib.suppress(ShardUnavailable):  # progress is advice: never fail a rebalance for it
            self._txn("reporting progress", {"compare": compare, "success": [put], "failure": []})

    def progress(self) -> tuple[int, int, int] | None:
        kv = self._read(self._progress_key, "reading the progress", absent_ok=True)
        if kv is None:
            return None
        try:
            epoch, moved, planned = json.loads(_unb64(kv.get("value", "")))
            return int(epoch), int(moved), int(planned)
        except (ValueError, TypeError):
            return None

    # -- the watch -----------------------------------------------------------------------

    def watch(self, callback: Callable[[MembershipDoc], None]) -> bool:
        with self._lock:
            self._callbacks.append(callback)
            if self._watch_thread is not None or self._closed:
                return not self._closed
            import requests

            self._watch_session = requests.Session()
            self._configure(self._watch_session)
            if self._token is not None:
                self._watch_session.headers["Authorization"] = self._token
            self._watch_thread = threading.Thread(target=self._watch_loop, name="dhtcart-etcd-watch", daemon=True)
            self._watch_thread.start()
        # a handle that returns from open() is watching (or knows it is not): one round trip, bounded
        self._watch_settled.wait(self._url.timeout)
        return True

    @property
    def watching(self) -> bool | None:
        """Whether this handle's watch is live now (``None`` before :meth:`watch` is called)."""
        if self._watch_thread is None:
            return None
        return self._watch_live and not self._closed

    def _deliver(self, doc: MembershipDoc, revision: int, delivered: int) -> int:
        self._note(doc, revision)
        if doc.epoch <= delivered:
            return delivered
        for callback in list(self._callbacks):
            with contextlib.suppress(Exception):  # a handle's failure to switch costs it a redirect later
                callback(doc)
        return doc.epoch

    def _watch_loop(self) -> None:
        """Follow the document's key until :meth:`close` (see the module doc)."""
        from requests import RequestException

        with self._lock:
            known = self._known
        start = known[1] + 1 if known is not None else 0  # 0: read the document first
        delivered = known[0] if known is not None else 0
        delay = 0.05
        index = self._current
        stop = self._watch_stop
        while not stop.is_set():
            client = self._clients[index % len(self._clients)]
            try:
                if start == 0:  # first run, or etcd compacted what we had not seen: read the document
                    kv, revision = self._attempt(client, lambda c: self._range(c, self._doc_key))
                    if kv is not None:
                        delivered = self._deliver(self._decode(kv), int(kv["mod_revision"]), delivered)
                    start = revision + 1
                start, delivered = self._follow(client, start, delivered)
                delay = 0.05  # the stream ended cleanly (idle, or a compaction): open it again at once
            except (OSError, _Refused, RequestException, ValueError, KeyError, TypeError, ShardUnavailable):
                self._watch_live = False
                self._watch_settled.set()
                if stop.is_set():
                    return
                index += 1  # this member failed us: the next one
                stop.wait(delay)
                delay = min(delay * 2, 1.0)

    def _follow(self, client: Etcd3Client, start: int, delivered: int) -> tuple[int, int]:
        """Stream the document's changes from revision ``start`` on ``client``'s member; return where to go on
        from when the stream ends idle (``start`` 0: read the document again first)."""
        from requests.exceptions import ConnectionError as RequestsConnectionError

        session = self._watch_session
        assert session is not None
        if self._settings.user and self._token is None:
            self._authenticate(client)
        request = {"create_request": {"key": _b64(self._doc_key), "start_revision": start}}
        response = session.post(
            client.get_url("/watch"), json=request, stream=True, timeout=(self._url.timeout, self._watch_idle)
        )
        self._watch_response = response
        try:
            if self._watch_stop.is_set():
                return start, delivered
            if response.status_code != 200:
                code, message = _grpc_error(response.text)
                if code == _UNAUTHENTICATED:
                    self._token = None
                raise OSError(f"watch refused: {message}")
            created = False
            try:
                for line in response.iter_lines(chunk_size=None):
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise OSError(str(message["error"].get("message", message["error"])))
                    result = message["result"]
                    if int(result.get("compact_revision", 0) or 0):
                        return 0, delivered  # what we had not seen is compacted away: read it afresh
                    if result.get("canceled"):
                        raise OSError(f"watch canceled: {result.get('cancel_reason', '')}")
                    if result.get("created"):
                        created = True
                        self._watch_live = True
                        self._watch_settled.set()
                        continue
                    for event in result.get("events") or []:
                        kv = event["kv"]
                        start = int(kv["mod_revision"]) + 1
                        if event.get("type") == "DELETE":
                            continue
                        try:
                            doc = self._decode(kv)
                        except ShardUnavailable:
                            continue  # not a document this version reads: the next load will say so
                        delivered = self._deliver(doc, start - 1, delivered)
            except RequestsConnectionError as exc:
                # silent for watch_idle seconds: a live stream is opened again (the member may
                # have hung); one that never said "created" is a member that does not answer
                if created and "timed out" in str(exc).lower() and not self._watch_stop.is_set():
                    return start, delivered
                raise OSError(str(exc)) from None
            raise OSError("the watch stream ended")
        finally:
            self._watch_response = None
            response.close()

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch_stop.set()
        response = self._watch_response
        if response is not None:  # wake the watch thread from its read
            connection = getattr(response.raw, "connection", None)
            sock = getattr(connection, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        thread = self._watch_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._url.timeout + 1)
        self._watch_live = False
        for client in self._clients:
            client.session.close()
        if self._watch_session is not None:
            self._watch_session.close()
