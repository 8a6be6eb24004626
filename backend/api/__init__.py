"""HTTP API: the app factory, auth and one router module per resource."""
