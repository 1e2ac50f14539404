"""`python -m lenscope.client.cli`."""
from lenscope.client.cli.app import app

app()
