"""The test suite. A package, so that test modules with the same name in two
folders (tests/unit/test_options.py, tests/integration/test_options.py) do
not collide; shared code is in tests/helpers."""
