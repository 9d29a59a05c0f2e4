"""The consistency check passes on the modules and fails, naming each mistake, on a bad configuration."""

import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import consistency  # noqa: E402

HERE = Path(__file__).parent
BIN_DIR = Path(os.environ.get("CHAT_BIN_DIR", consistency.REPO / "target" / "debug"))


class ModulesTest(unittest.TestCase):
    def test_the_modules_configure_the_binaries(self):
        self.assertEqual(consistency.check(consistency.DEFAULT_ROOT, BIN_DIR), [])


class BadFixtureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.problems = consistency.check(HERE / "fixtures" / "bad", BIN_DIR, require_all=False)

    def assertReported(self, *words):
        hits = [p for p in self.problems if all(w in p for w in words)]
        self.assertTrue(hits, f"no problem mentions {words}; problems: {self.problems}")

    def test_a_variable_the_binary_does_not_accept(self):
        self.assertReported("GATEWAY_NOT_A_SETTING", "does not accept")

    def test_a_required_variable_left_unset(self):
        self.assertReported("GATEWAY_REDIS_URL", "unset", "127.0.0.1")

    def test_a_port_the_service_does_not_listen_on(self):
        self.assertReported("gateway_debug", "9999", "[8080, 50061]")

    def test_the_ports_it_does_listen_on_pass(self):
        self.assertFalse([p for p in self.problems if "gateway_ws " in p or "port 8080" in p], self.problems)

    def test_an_undocumented_default(self):
        self.assertReported("GATEWAY_SEND_QUEUE", "neither set nor documented")


class EntrypointTest(unittest.TestCase):
    def test_every_pem_variable_feeds_a_file_setting_some_binary_accepts(self):
        accepted = set()
        for argv in [("gateway",), ("chat-service",), ("delivery-worker",)]:
            accepted |= consistency.binary_settings(argv, BIN_DIR).accepted
        for pem, file_setting in consistency.entrypoint_pems().items():
            self.assertIn(file_setting, accepted, pem)


if __name__ == "__main__":
    unittest.main()
