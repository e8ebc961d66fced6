"""Feature tables from validated orders, and the Feast store that serves them."""
