"""Shared helpers of the test suite, imported as `tests.helpers.<module>`.

Ordinary modules, not fixtures: frame builders and checks (frames, checksum),
the engine-level guest (engine_guest, tcp_conn), the integration bed
(testbed, daemons, testhost, portfwd, fake_dns, run_cmd), the client bed
(clientbed), polling (wait), and the fixtures that several conftest.py files
register (fixtures). Nothing here may run anything at import time; the
pytest configuration puts the repository root on sys.path (`pythonpath`).
"""
