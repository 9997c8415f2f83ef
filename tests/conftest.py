pytest_plugins = ["ragcun.testing.fixtures"]
