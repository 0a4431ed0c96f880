"""The engine tests share the in-process whole atlas of tests/conftest.py (`whole_run`)."""
