"""``python -m webhooks``: the ``webhooks`` command, for when its script is not on PATH."""

from webhooks.cli import main

main()
