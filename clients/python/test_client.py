"""Tests of the Python client: offline ones, then against a live local 3-node cluster that
the tests start themselves (`cairn cluster` from dist/, on free ports in 22000-23000) and
stop at the end.

Run with Debian's interpreter (it has grpcio and protobuf): /usr/bin/python3 test_client.py
(or clients/python/run-tests.sh, which also installs what is missing and builds dist/).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

from cairn_client import CairnError, Client, kv_pb2, tls_credentials  # noqa: E402
from cairn_client.client import UNREACHABLE, WRONG_SERVICE, failure_of  # noqa: E402
from cairn_client.gen.cairn.kv.v1 import kv_pb2_grpc  # noqa: E402

NODES = 3
# Ports are drawn from here; node N uses base + N - 1 (cairn cluster's --client-port/--peer-port).
CLIENT_PORT_RANGE = (22000, 22497)
PEER_PORT_OFFSET = 500
PORT_PICK_TRIES = 20
CLUSTER_START_TRIES = 3
LEADER_WAIT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.1
CLUSTER_STOP_SECONDS = 20.0
WRITER_THREADS = 4
WRITES_PER_THREAD = 15
# cairn serve's default --max-key-bytes.
MAX_KEY_BYTES = 4096


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def closed_endpoints(count: int) -> list[str]:
    """Endpoints that refuse connections: distinct ports that were free a moment ago."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{probe.getsockname()[1]}" for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_for(condition, deadline_seconds: float, what: str):
    """Polls `condition` until it returns something truthy, or fails after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - reported if the deadline passes
            last_error = error
        time.sleep(POLL_INTERVAL_SECONDS)
    raise AssertionError(f"timed out after {deadline_seconds} s waiting for {what} (last error: {last_error})")


class LocalCluster:
    """`cairn cluster --nodes 3` on free loopback ports, with its data in a temporary folder."""

    def __init__(self) -> None:
        self.main = os.path.join(REPO, "dist", "src", "cli", "main.js")
        self.node = os.environ.get("CAIRN_NODE", "node")
        self.process: subprocess.Popen | None = None
        self.data_dir = tempfile.mkdtemp(prefix="cairn-python-client-")
        self.log_path = os.path.join(self.data_dir, "cluster.log")
        self.endpoints: list[str] = []

    def start(self) -> None:
        if not os.path.exists(self.main):
            raise RuntimeError(f"{self.main} is missing: run `npm run build` first")
        for attempt in range(CLUSTER_START_TRIES):
            client_port = self._pick_ports()
            if self._start_on(client_port, attempt):
                return
        raise RuntimeError(f"cairn cluster did not start in {CLUSTER_START_TRIES} tries:\n{self.log_tail()}")

    def _pick_ports(self) -> int:
        for _ in range(PORT_PICK_TRIES):
            base = random.randint(*CLIENT_PORT_RANGE)
            ports = [base + i for i in range(NODES)] + [base + PEER_PORT_OFFSET + i for i in range(NODES)]
            if all(port_is_free(p) for p in ports):
                return base
        raise RuntimeError(f"no {NODES} free client and peer ports found in {CLIENT_PORT_RANGE}")

    def _start_on(self, client_port: int, attempt: int) -> bool:
        """Starts the cluster; False if it exited while starting (a port taken meanwhile)."""
        data = os.path.join(self.data_dir, f"try-{attempt}")
        args = [self.node, self.main, "cluster", "--nodes", str(NODES), "--data-dir", data,
                "--client-port", str(client_port), "--peer-port", str(client_port + PEER_PORT_OFFSET)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.endpoints = [f"127.0.0.1:{client_port + i}" for i in range(NODES)]
        try:
            wait_for(self._leader_known_everywhere, LEADER_WAIT_SECONDS, "a leader every node agrees on")
            return True
        except AssertionError:
            if self.process.poll() is None:
                raise AssertionError(f"no leader within {LEADER_WAIT_SECONDS} s:\n{self.log_tail()}") from None
            return False

    def _leader_known_everywhere(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"cairn cluster exited with code {self.process.returncode}")
        leaders = {self.status(i).leader_id for i in range(NODES)}
        return len(leaders) == 1 and 0 not in leaders

    def status(self, index: int) -> kv_pb2.StatusResponse:
        with Client([self.endpoints[index]], timeout=1.0) as client:
            return client.status_of(0)

    def roles(self) -> tuple[int, list[int]]:
        """The leader's node index and the followers' (0-based), as the nodes see it now."""
        statuses = [self.status(i) for i in range(NODES)]
        leader = next(i for i, s in enumerate(statuses) if s.role == "leader")
        return leader, [i for i in range(NODES) if i != leader]

    def stop(self) -> None:
        """Stops `cairn cluster` (it takes its nodes down) and removes the data."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=CLUSTER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                # Its nodes stop by themselves once it is gone (their IPC lifeline closes).
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"


def openssl(*args: str) -> None:
    subprocess.run(["/usr/bin/openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_test_certificates(directory: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made now by openssl
    (the commands of docs/security.md; never committed)."""
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "ca.key")}
    openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", paths["ca.key"], "-out", paths["ca.pem"], "-subj", "/CN=test-ca", "-days", "2")
    for name, sans in (("server", "IP:127.0.0.1"), ("client", "URI:cairn-user:test")):
        ext = os.path.join(directory, f"{name}.ext")
        with open(ext, "w") as file:
            file.write(f"basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n")
        key, csr, cert = (os.path.join(directory, f"{name}.{suffix}") for suffix in ("key", "csr", "pem"))
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", csr, "-CA", paths["ca.pem"], "-CAkey", paths["ca.key"],
                "-set_serial", str(random.randint(1, 2**62)), "-days", "2", "-out", cert, "-extfile", ext)
        paths[f"{name}.pem"], paths[f"{name}.key"] = cert, key
    return paths


class TlsNodeTest(unittest.TestCase):
    """One `cairn serve` with TLS on its client port and client certificates required."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="cairn-python-tls-")
        cls.files = make_test_certificates(cls.dir)
        cls.credentials = tls_credentials(cls.files["ca.pem"], cls.files["client.pem"], cls.files["client.key"])
        client_port, peer_port = closed_endpoints(2)
        cls.endpoint = client_port
        main = os.path.join(REPO, "dist", "src", "cli", "main.js")
        cls.log = open(os.path.join(cls.dir, "node.log"), "wb")
        cls.process = subprocess.Popen(
            [os.environ.get("CAIRN_NODE", "node"), main, "serve", "--id", "1", "--data-dir", os.path.join(cls.dir, "data"),
             "--client-addr", client_port, "--peer-addr", peer_port, "--tick-ms", "50",
             "--cert-file", cls.files["server.pem"], "--key-file", cls.files["server.key"], "--client-ca-file", cls.files["ca.pem"]],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=cls.log, stderr=subprocess.STDOUT)

        def leader_known():
            with Client([cls.endpoint], timeout=1.0, credentials=cls.credentials) as client:
                return client.status_of(0).leader_id == 1
        wait_for(leader_known, LEADER_WAIT_SECONDS, "the TLS node to lead")

    @classmethod
    def tearDownClass(cls):
        cls.process.send_signal(signal.SIGTERM)
        try:
            cls.process.wait(timeout=CLUSTER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            cls.process.kill()
            cls.process.wait()
        cls.log.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_put_and_get_over_tls_with_a_client_certificate(self):
        with Client([self.endpoint], credentials=self.credentials) as client:
            client.put("tls/key", "value")
            self.assertEqual(client.get("tls/key").kv.value, b"value")

    def test_without_a_client_certificate_the_call_fails(self):
        without = tls_credentials(self.files["ca.pem"])
        with Client([self.endpoint], timeout=1.0, total_timeout=2.0, credentials=without) as client:
            with self.assertRaises(CairnError) as raised:
                client.get("tls/key")
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_the_example_runs_with_cacert_cert_and_key(self):
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, "example.py"), "--endpoints", self.endpoint, "--prefix", f"tls-{uuid.uuid4().hex}/",
             "--cacert", self.files["ca.pem"], "--cert", self.files["client.pem"], "--key", self.files["client.key"]],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("get", result.stdout)


class FakeRpcError(grpc.RpcError):
    """A gRPC failure as grpc-python raises it, for the client to handle."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers=()):
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, tuple(trailers)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


class PutInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Records every Put request the client sends; `fault(n, send)` decides what the n-th
    Put does (send() sends it for real and returns the answer)."""

    def __init__(self, fault=None):
        self.puts: list[kv_pb2.PutRequest] = []
        self.fault = fault
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation, client_call_details, request):
        if client_call_details.method != "/cairn.kv.v1.KV/Put":
            return continuation(client_call_details, request)
        with self._lock:
            self.puts.append(request)
            n = len(self.puts)
        if self.fault is None:
            return continuation(client_call_details, request)
        return self.fault(n, lambda: continuation(client_call_details, request))


def lose_first_answer(n, send):
    """The first Put reaches the cluster and is applied, but its answer is lost."""
    outcome = send()
    if n == 1:
        outcome.result()
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset (injected after the put was applied)")
    return outcome


def session_expired(n, send):
    raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "session expired (injected)", [("cairn-error-code", "SESSION_EXPIRED")])


def overloaded(n, send):
    raise FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded (injected)", [("cairn-error-code", "OVERLOADED")])


class OfflineTest(unittest.TestCase):
    """What needs no cluster."""

    def test_generated_code_matches_proto(self):
        result = subprocess.run(["bash", os.path.join(HERE, "generate.sh"), "--check"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_error_carries_code_message_and_trailers(self):
        error = FakeRpcError(
            grpc.StatusCode.UNAVAILABLE,
            "node 1 is not the leader; node 2 is",
            [("cairn-error-code", "NOT_LEADER"), ("cairn-leader-id", "2"), ("payload-bin", b"\x00")],
        )
        failure = failure_of(error, "127.0.0.1:7001", 1.0)
        wrapped = CairnError(failure, [failure])
        self.assertEqual(wrapped.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(wrapped.details, "node 1 is not the leader; node 2 is")
        self.assertEqual(wrapped.error_code, "NOT_LEADER")
        self.assertEqual(wrapped.leader_id, 2)
        self.assertEqual(wrapped.endpoint, "127.0.0.1:7001")
        self.assertNotIn("payload-bin", wrapped.trailers)
        self.assertIn("NOT_LEADER", str(wrapped))

    def test_an_error_without_trailers_has_no_cairn_code(self):
        failure = failure_of(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"), "127.0.0.1:1", 1.0)
        wrapped = CairnError(failure, [failure])
        self.assertIsNone(wrapped.error_code)
        self.assertIsNone(wrapped.leader_id)
        self.assertEqual(failure.kind, UNREACHABLE)

    def test_bad_arguments_are_refused_before_any_call(self):
        with self.assertRaisesRegex(ValueError, "no endpoints"):
            Client([])
        with self.assertRaisesRegex(ValueError, "HOST:PORT"):
            Client(["localhost"])
        with self.assertRaisesRegex(ValueError, "timeout"):
            Client(["127.0.0.1:1"], timeout=0)
        with self.assertRaisesRegex(ValueError, "consistency"):
            Client(["127.0.0.1:1"], consistency="eventual")
        with Client("127.0.0.1:1") as client, self.assertRaisesRegex(TypeError, "key must be bytes or str"):
            client.get(42)

    def test_lowest_unanswered_sequence_covers_writes_in_flight(self):
        with Client(["127.0.0.1:1"]) as client:
            first = client._begin_write()
            second = client._begin_write()
            self.assertEqual((first.sequence, first.lowest_unanswered_sequence), (1, 1))
            self.assertEqual((second.sequence, second.lowest_unanswered_sequence), (2, 1))
            client._end_write(first, failed=False)
            third = client._begin_write()
            self.assertEqual((third.sequence, third.lowest_unanswered_sequence), (3, 2))
            self.assertEqual(third.session.client_id, first.session.client_id)


class LiveClusterTest(unittest.TestCase):
    """Against a real 3-node cairn cluster on loopback."""

    cluster: LocalCluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = LocalCluster()
        try:
            cls.cluster.start()
        except BaseException:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def setUp(self):
        # Each test writes under its own prefix, so tests do not see each other's keys.
        self.prefix = f"{self._testMethodName}/{uuid.uuid4().hex[:8]}/"
        self.client = Client(self.cluster.endpoints, timeout=5.0)
        self.addCleanup(self.client.close)

    def key(self, name: str) -> bytes:
        return (self.prefix + name).encode()

    def client_for(self, endpoints, **options) -> Client:
        client = Client(endpoints, **options)
        self.addCleanup(client.close)
        return client

    def test_put_then_get(self):
        put = self.client.put(self.key("k"), b"hello")
        got = self.client.get(self.key("k"))
        self.assertTrue(got.HasField("kv"))
        self.assertEqual(got.kv.value, b"hello")
        self.assertEqual(got.kv.mod_revision, put.header.revision)
        self.assertEqual(got.kv.create_revision, put.header.revision)
        self.assertEqual(got.kv.version, 1)
        again = self.client.put(self.key("k"), "hello again")
        got = self.client.get(self.key("k"))
        self.assertEqual(got.kv.value, b"hello again")
        self.assertEqual(got.kv.version, 2)
        self.assertEqual(got.kv.mod_revision, again.header.revision)
        self.assertEqual(got.kv.create_revision, put.header.revision)

    def test_get_of_a_missing_key_answers_without_kv(self):
        # cairn answers OK with GetResponse.kv absent (no NOT_FOUND error), as kv.proto says.
        got = self.client.get(self.key("never-written"))
        self.assertFalse(got.HasField("kv"))
        self.assertGreater(got.header.member_id, 0)

    def test_delete(self):
        self.client.put(self.key("k"), b"v")
        deleted = self.client.delete(self.key("k"), prev_kv=True)
        self.assertTrue(deleted.deleted)
        self.assertEqual(deleted.prev_kv.value, b"v")
        self.assertFalse(self.client.get(self.key("k")).HasField("kv"))
        self.assertFalse(self.client.delete(self.key("k")).deleted)

    def test_list_with_prefix_and_limit(self):
        names = ["a", "b", "c", "d", "e"]
        for name in reversed(names):
            self.client.put(self.key("items/" + name), name.upper())
        self.client.put(self.key("items"), b"not under the prefix items/")
        self.client.put(self.key("itemz/x"), b"nor this")
        prefix = self.key("items/")

        page = self.client.list(prefix, limit=2)
        self.assertEqual([kv.key for kv in page.kvs], [prefix + b"a", prefix + b"b"])
        self.assertEqual([kv.value for kv in page.kvs], [b"A", b"B"])
        self.assertTrue(page.more)

        everything = self.client.list(prefix, limit=len(names))
        self.assertEqual([kv.key for kv in everything.kvs], [prefix + n.encode() for n in names])
        self.assertFalse(everything.more)

        keys_only = self.client.list(prefix, keys_only=True)
        self.assertEqual(len(keys_only.kvs), len(names))
        self.assertTrue(all(kv.value == b"" for kv in keys_only.kvs))
        self.assertFalse(keys_only.more)

        window = self.client.range(prefix + b"b", prefix + b"d")
        self.assertEqual([kv.key for kv in window.kvs], [prefix + b"b", prefix + b"c"])

    def test_a_follower_forwards_writes_and_serves_linearizable_reads(self):
        leader, followers = self.cluster.roles()
        leader_id = self.cluster.status(leader).id
        writer_index, reader_index = followers
        writer = self.client_for([self.cluster.endpoints[writer_index]])
        reader = self.client_for([self.cluster.endpoints[reader_index]], consistency="linearizable")

        put = writer.put(self.key("k"), b"through a follower")
        self.assertEqual(put.header.member_id, self.cluster.status(writer_index).id)
        self.assertEqual(put.header.leader_id, leader_id)
        self.assertNotEqual(put.header.member_id, put.header.leader_id)

        got = reader.get(self.key("k"))
        self.assertEqual(got.header.member_id, self.cluster.status(reader_index).id)
        self.assertNotEqual(got.header.member_id, leader_id)
        self.assertEqual(got.kv.value, b"through a follower")
        self.assertGreaterEqual(got.header.revision, put.header.revision)
        listed = reader.list(self.prefix)
        self.assertEqual([kv.key for kv in listed.kvs], [self.key("k")])

    def test_the_client_moves_to_the_leader_once_an_answer_names_it(self):
        leader, followers = self.cluster.roles()
        client = self.client_for([self.cluster.endpoints[followers[0]], self.cluster.endpoints[leader]])
        first = client.put(self.key("k"), b"1")
        self.assertNotEqual(first.header.member_id, first.header.leader_id)
        second = client.put(self.key("k"), b"2")
        self.assertEqual(second.header.member_id, second.header.leader_id)
        self.assertEqual(second.header.member_id, self.cluster.status(leader).id)

    def test_an_oversized_key_is_invalid_argument_with_cairn_error_code(self):
        with self.assertRaises(CairnError) as caught:
            self.client.put(b"k" * (MAX_KEY_BYTES + 1), b"v")
        error = caught.exception
        self.assertEqual(error.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(error.error_code, "INVALID_ARGUMENT")
        self.assertIn("--max-key-bytes", error.details)
        self.assertIn(str(MAX_KEY_BYTES + 1), error.details)
        # A definitive answer: no other endpoint was asked, and nothing may have been applied.
        self.assertEqual(len(error.failures), 1)
        self.assertFalse(error.outcome_unknown)
        self.assertIsNone(error.leader_id)
        with self.assertRaises(CairnError) as read:
            self.client.get(b"k" * (MAX_KEY_BYTES + 1))
        self.assertEqual(read.exception.error_code, "INVALID_ARGUMENT")
        # The limit itself is allowed.
        self.client.put(self.key("") + b"k" * (MAX_KEY_BYTES - len(self.key(""))), b"v")

    def test_session_expired_carries_its_cairn_error_code(self):
        # A new client id that claims earlier answers (lowest_unanswered_sequence > 1) might be
        # a retry of a write applied before an eviction: cairn refuses it, never a silent OK.
        with grpc.insecure_channel(self.cluster.endpoints[0]) as channel:
            stub = kv_pb2_grpc.KVStub(channel)
            request = kv_pb2.PutRequest(key=self.key("k"), value=b"v", client_id=f"py-test-{uuid.uuid4()}",
                                        sequence=5, lowest_unanswered_sequence=2)
            with self.assertRaises(grpc.RpcError) as caught:
                stub.Put(request, timeout=5.0)
        error = CairnError(failure_of(caught.exception, self.cluster.endpoints[0], 5.0), [])
        self.assertEqual(error.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(error.error_code, "SESSION_EXPIRED")
        self.assertFalse(self.client.get(self.key("k")).HasField("kv"))

    def test_a_dead_first_endpoint_is_skipped(self):
        dead = closed_endpoints(1)[0]
        client = self.client_for([dead] + self.cluster.endpoints, timeout=2.0)
        put = client.put(self.key("k"), b"v")
        self.assertGreater(put.header.revision, 0)
        self.assertEqual(client.get(self.key("k")).kv.value, b"v")
        self.assertEqual(len(client.list(self.prefix).kvs), 1)
        self.assertIn(client.status().id, range(1, NODES + 1))

    def test_every_endpoint_dead_is_unavailable_naming_each(self):
        dead = closed_endpoints(2)
        client = self.client_for(dead, timeout=1.0)
        with self.assertRaises(CairnError) as caught:
            client.get(self.key("k"))
        error = caught.exception
        self.assertEqual(error.code, grpc.StatusCode.UNAVAILABLE)
        self.assertIsNone(error.error_code)
        self.assertEqual([f.endpoint for f in error.failures], dead)
        self.assertTrue(all(f.kind == UNREACHABLE for f in error.failures))

    def test_the_same_client_id_and_sequence_apply_once(self):
        session = dict(client_id=f"py-test-{uuid.uuid4()}", sequence=1, lowest_unanswered_sequence=1)
        leader, followers = self.cluster.roles()
        answers = []
        # The retry goes elsewhere, as after a failover, and carries another value: it must
        # get the first answer and change nothing.
        for index, value in ((leader, b"first"), (followers[0], b"second")):
            with grpc.insecure_channel(self.cluster.endpoints[index]) as channel:
                stub = kv_pb2_grpc.KVStub(channel)
                answers.append(stub.Put(kv_pb2.PutRequest(key=self.key("k"), value=value, **session), timeout=5.0))
        self.assertEqual(answers[0].header.revision, answers[1].header.revision)
        got = self.client.get(self.key("k"))
        self.assertEqual(got.kv.value, b"first")
        self.assertEqual(got.kv.version, 1)
        self.assertEqual(got.kv.mod_revision, answers[0].header.revision)

    def test_the_client_retries_a_lost_answer_under_the_same_sequence(self):
        recorder = PutInterceptor(lose_first_answer)
        client = self.client_for(self.cluster.endpoints, interceptors=[recorder])
        put = client.put(self.key("k"), b"v")
        self.assertEqual(len(recorder.puts), 2, "the lost answer is retried once")
        first, retry = recorder.puts
        self.assertTrue(first.client_id)
        self.assertEqual((retry.client_id, retry.sequence), (first.client_id, first.sequence))
        got = self.client.get(self.key("k"))
        self.assertEqual(got.kv.version, 1, "the retried write was applied twice")
        self.assertEqual(got.kv.mod_revision, put.header.revision)
        # The next write continues the session, with the answered sequence released.
        client.put(self.key("k2"), b"v")
        following = recorder.puts[2]
        self.assertEqual(following.client_id, first.client_id)
        self.assertEqual(following.sequence, first.sequence + 1)
        self.assertEqual(following.lowest_unanswered_sequence, following.sequence)

    def test_an_expired_session_is_renewed_once(self):
        # The first attempt is refused SESSION_EXPIRED (applied nowhere): sent again under a
        # new session, which is applied.
        recorder = PutInterceptor(lambda n, send: session_expired(n, send) if n == 1 else send())
        client = self.client_for(self.cluster.endpoints, interceptors=[recorder])
        client.put(self.key("k"), b"v")
        self.assertEqual(len(recorder.puts), 2)
        self.assertNotEqual(recorder.puts[1].client_id, recorder.puts[0].client_id)
        self.assertEqual((recorder.puts[1].sequence, recorder.puts[1].lowest_unanswered_sequence), (1, 1))
        self.assertEqual(self.client.get(self.key("k")).kv.value, b"v")

        # Refused again under the new session: the error stands, no loop.
        always = PutInterceptor(session_expired)
        refused = self.client_for(self.cluster.endpoints, interceptors=[always])
        with self.assertRaises(CairnError) as caught:
            refused.put(self.key("k3"), b"v")
        self.assertEqual(caught.exception.error_code, "SESSION_EXPIRED")
        self.assertEqual(len(always.puts), 2)

    def test_a_write_that_failed_is_followed_by_a_new_session(self):
        # As cairn's CLI does: after giving up on a write, the client does not go on claiming
        # answers around it; its next write starts a new session.
        refuse_first = PutInterceptor(lambda n, send: overloaded(n, send) if n == 1 else send())
        client = self.client_for(self.cluster.endpoints, interceptors=[refuse_first])
        with self.assertRaises(CairnError) as caught:
            client.put(self.key("k"), b"refused")
        self.assertEqual(caught.exception.error_code, "OVERLOADED")
        client.put(self.key("k"), b"accepted")
        failed, following = refuse_first.puts
        self.assertNotEqual(following.client_id, failed.client_id)
        self.assertEqual((following.sequence, following.lowest_unanswered_sequence), (1, 1))
        self.assertEqual(self.client.get(self.key("k")).kv.value, b"accepted")

    def test_the_example_runs(self):
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, "example.py"), "--endpoints", ",".join(self.cluster.endpoints), "--prefix", self.prefix],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(f"get {self.prefix}color -> blue", result.stdout)
        self.assertIn(f"get {self.prefix}no-such-key -> not found", result.stdout)
        self.assertIn(f"list {self.prefix}color\tblue", result.stdout)
        self.assertIn("(more keys follow; raise the limit)", result.stdout)

    def test_a_peer_port_is_skipped_as_the_wrong_service(self):
        peer_port = int(self.cluster.endpoints[0].rsplit(":", 1)[1]) + PEER_PORT_OFFSET
        peer = f"127.0.0.1:{peer_port}"
        client = self.client_for([peer] + self.cluster.endpoints)
        client.put(self.key("k"), b"v")
        self.assertEqual(client.get(self.key("k")).kv.value, b"v")
        only_peer = self.client_for([peer], timeout=2.0)
        with self.assertRaises(CairnError) as caught:
            only_peer.get(self.key("k"))
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(caught.exception.primary.kind, WRONG_SERVICE)
        self.assertEqual(len(caught.exception.failures), 1)

    def test_writes_from_several_threads_share_one_session(self):
        recorder = PutInterceptor()
        client = self.client_for(self.cluster.endpoints, interceptors=[recorder])
        errors = []

        def write(thread: int) -> None:
            try:
                for i in range(WRITES_PER_THREAD):
                    client.put(self.key(f"t{thread}/{i}"), str(i))
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(WRITER_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertEqual(errors, [])
        total = WRITER_THREADS * WRITES_PER_THREAD
        self.assertEqual(len(recorder.puts), total)
        self.assertEqual(len({p.client_id for p in recorder.puts}), 1)
        self.assertEqual(sorted(p.sequence for p in recorder.puts), list(range(1, total + 1)))
        self.assertTrue(all(1 <= p.lowest_unanswered_sequence <= p.sequence for p in recorder.puts))
        listed = self.client.list(self.prefix)
        self.assertEqual(len(listed.kvs), total)
        self.assertTrue(all(kv.version == 1 for kv in listed.kvs))

    def test_status(self):
        status = self.client.status()
        self.assertIn(status.role, {"leader", "follower"})
        self.assertEqual(len(status.members), NODES)
        self.assertNotEqual(status.leader_id, 0)
        ids = sorted(self.client.status_of(i).id for i in range(NODES))
        self.assertEqual(ids, list(range(1, NODES + 1)))
        self.assertEqual(sorted(m.id for m in self.client.members().members), ids)


def main() -> int:
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    if len(sys.argv) > 1:
        suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:], sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
    print(f"python client: {passed} passed, {failed} failed{skipped}")
    return 0 if result.wasSuccessful() and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
