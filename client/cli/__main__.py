"""`python -m lenscope.client.cli.app`."""
from lenscope.client.cli.app.app import app

app()
