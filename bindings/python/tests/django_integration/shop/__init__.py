"""A Django app of the tests: orders placed by a view, shipments written by a consumer."""
