"""State-machine test: a real server process driven by random sequences of good and bad requests.

The model: every request is consumed; a good one is answered and leaves no ``error:``
status behind; a bad one (unknown command, truncated or missing tensor, malformed
request) is not answered and leaves an ``error:`` status naming the problem; the
server never stops serving.
"""

from __future__ import annotations

import os
import string

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from switchyard.services.tensor.file_client import PythonSession
from switchyard.services.tensor.server import SessionError
from switchyard.services.tensor.tsr import encode
from switchyard.testing.tsr import same_tensor, tsr_arrays

SESSION: PythonSession | None = None
WORDS = st.text(alphabet=string.ascii_lowercase + " ", max_size=12)


@pytest.fixture(scope="module", autouse=True)
def server_process(tmp_path_factory):
    global SESSION
    with PythonSession("default", "states", root=tmp_path_factory.mktemp("states"), poll_interval=0.0005) as session:
        session.start()
        session.fetch_response("hello warmup", timeout=30)
        SESSION = session
        yield
        SESSION = None


class FileSessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert SESSION is not None
        self.s = SESSION
        self.in_error = self.s.status().startswith("error:")

    def _fails(self, request, fragment: str) -> None:
        with pytest.raises(SessionError) as info:
            self.s.fetch_response(request, 5)
        assert str(info.value).startswith("error:") and fragment in str(info.value)
        self.in_error = True

    def _ok(self) -> None:
        self.in_error = False

    @rule(text=WORDS)
    def hello(self, text):
        assert self.s.fetch_response({"cmd": "hello", "params": text}) == f"Hello {text.title()}"
        self._ok()

    @rule(m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), seed=st.integers(0, 2**16))
    def matmul(self, m, k, n, seed):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        np.testing.assert_allclose(self.s.calculate("matmul", a, b), a @ b, rtol=1e-4, atol=1e-5)
        self._ok()

    @rule(x=tsr_arrays(dtype=np.int32, max_side=4))
    def add_to_itself(self, x):
        assert same_tensor(self.s.calculate("add", x, x), x + x)
        self._ok()

    @rule(cmd=st.sampled_from(["bogus", "MATMULX", "divide", "hello_world"]))
    def unknown_command(self, cmd):
        self._fails({"cmd": cmd, "params": ""}, f"Failed to process command {cmd}")

    @rule(cut=st.integers(0, 70))
    def truncated_tensor(self, cut):
        blob = encode(np.ones((4, 4), np.float32))
        (self.s.dir / "a.tsr").write_bytes(blob[:cut])
        self.s.send_tensor(np.ones((4, 4), np.float32), "b")
        self._fails({"cmd": "matmul", "params": "a,b"}, "TSR")

    @rule()
    def missing_tensor(self):
        (self.s.dir / "ghost.tsr").unlink(missing_ok=True)
        self.s.send_tensor(np.ones((2, 2), np.float32), "a")
        self._fails({"cmd": "add", "params": "a,ghost"}, "'ghost' not found")

    @rule(body=st.sampled_from(['{"cmd": ', '{"cmd": 1}', '{"params": "x"}', "   "]))
    def malformed_request(self, body):
        self._fails(body, "request")

    @invariant()
    def consumed_and_status_consistent(self):
        assert self.s.wait_until_ready(5)
        assert not self.s.new_response()
        assert self.s.status().startswith("error:") == self.in_error
        assert self.s.running and self.s.is_alive() != self.in_error

    def teardown(self):
        for leftover in self.s.dir.glob("*.tsr"):
            os.unlink(leftover)


FileSessionMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=8, deadline=None)
test_file_session_states = FileSessionMachine.TestCase
